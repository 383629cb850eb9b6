"""Emitters: stream ids, the three calling conventions (on the loop, from worker threads, from
another event loop), event validation, terminal events, `StreamContext`, and the owner
`get_emitter` gives new streams."""

from __future__ import annotations

import asyncio
import base64
import inspect
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
from fastapi import Depends, FastAPI

from streaming_mw import (
    ChannelConfig,
    ConfigurationError,
    DeploymentEmitter,
    InvalidEventError,
    SSEEmitter,
    StreamClosedError,
    StreamContext,
    StreamEvent,
    StreamingMiddleware,
    get_emitter,
    init_streaming,
    streaming_identity,
)
from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
from streaming_mw.emitters import Published, new_stream_id
from streaming_mw.errors import EventTooLargeError, InvalidStreamIdError
from streaming_mw.runtime import StreamingContainer
from tests.helpers.asgi import AsgiClient, lifespan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")
BAD_IDS = ["bad id", "", "a/b", "{tag}", "x" * 129, "é", "a\nb"]


def make_channel(**options: Any) -> AsyncStreamChannel:
    config = ChannelConfig(**options)
    return AsyncStreamChannel(MemoryChannelBackend(config), config)


@pytest.fixture
def channel() -> AsyncStreamChannel:
    return make_channel()


@pytest.fixture
async def emitter(channel: AsyncStreamChannel) -> AsyncIterator[SSEEmitter]:
    opened = SSEEmitter(channel)
    await opened.open()
    yield opened
    await opened.drain()


async def history(channel: AsyncStreamChannel, stream_id: str) -> list[StreamEvent]:
    """Every event of the stream so far, with its cursor id, as a new follower sees it."""
    follower = await channel.follow(stream_id)
    events: list[StreamEvent] = []
    try:
        while (event := await follower.next(0)) is not None:
            events.append(event)
    finally:
        follower.aclose()
    return events


def messages(events: list[StreamEvent]) -> list[str]:
    return [cast("dict[str, Any]", event.data)["message"] for event in events]


def seqs(events: list[StreamEvent]) -> list[int]:
    return [int(str(event.id).rpartition("-")[2]) for event in events]


# --- stream ids and set-up -------------------------------------------------------------------


def test_new_stream_ids_are_128_random_url_safe_bits() -> None:
    ids = [SSEEmitter().stream_id for _ in range(1000)]
    assert len(set(ids)) == 1000
    for stream_id in [*ids, new_stream_id()]:
        assert URL_SAFE.fullmatch(stream_id), stream_id
        raw = base64.urlsafe_b64decode(stream_id + "=" * (-len(stream_id) % 4))
        assert len(raw) * 8 >= 128


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("kind", ["SSEEmitter", "StreamContext"])
def test_a_malformed_stream_id_is_refused(kind: str, bad: str) -> None:
    # StreamContext is handed an *existing* stream: it must never fall back to a random one.
    with pytest.raises(InvalidStreamIdError):
        SSEEmitter(stream_id=bad) if kind == "SSEEmitter" else StreamContext(bad, make_channel())


async def test_emitting_before_open_is_a_configuration_error(channel: AsyncStreamChannel) -> None:
    emitter = SSEEmitter(channel)
    calls: list[Callable[[], object]] = [
        lambda: emitter.log("x"),
        lambda: emitter.progress(10),
        lambda: emitter.complete(),
        lambda: emitter.error("x"),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError):
            call()
    assert not emitter.closed
    assert await channel.meta(emitter.stream_id) is None


async def test_open_without_channel_is_a_configuration_error(channel: AsyncStreamChannel) -> None:
    emitter = SSEEmitter()
    with pytest.raises(ConfigurationError):
        await emitter.open()
    emitter.bind(channel)
    meta = await emitter.open()
    assert meta.stream_id == emitter.stream_id
    assert emitter.epoch == meta.epoch


# --- on the loop -----------------------------------------------------------------------------


async def test_calls_on_the_loop_return_awaitables_of_the_published_event(
    channel: AsyncStreamChannel,
) -> None:
    emitter = SSEEmitter(channel)
    meta = await emitter.open()
    pending = [
        emitter.log("hello", level="debug", n=1),
        emitter.progress(50, step="build"),
        emitter.complete(result="ok"),
    ]
    assert all(inspect.isawaitable(p) for p in pending)
    events = [await p for p in pending]
    assert [e.id for e in events] == [f"{meta.epoch}-{n}" for n in (1, 2, 3)]
    assert [e.type for e in events] == ["log", "progress", "complete"]
    assert events[0].data == {"n": 1, "message": "hello", "level": "debug"}
    assert {e.stream_id for e in events} == {emitter.stream_id}
    assert [(e.id, e.data) for e in await history(channel, emitter.stream_id)] == [
        (e.id, e.data) for e in events
    ]

    other = SSEEmitter(channel)
    other_meta = await other.open()
    failing = other.error("failed")
    assert inspect.isawaitable(failing)
    error = await failing
    assert (error.type, error.id) == ("error", f"{other_meta.epoch}-1")


async def test_unawaited_calls_are_published_in_call_order(
    channel: AsyncStreamChannel, emitter: SSEEmitter
) -> None:
    for i in range(100):
        emitter.log(str(i))
    await emitter.drain()
    events = await history(channel, emitter.stream_id)
    assert messages(events) == [str(i) for i in range(100)]
    assert seqs(events) == list(range(1, 101))


# --- from worker threads and other loops -----------------------------------------------------


async def test_worker_thread_call_blocks_until_accepted(
    channel: AsyncStreamChannel, emitter: SSEEmitter
) -> None:
    def work() -> list[Awaitable[StreamEvent]]:
        return [emitter.log("t0"), emitter.progress(40), emitter.log("t1")]

    results = await asyncio.to_thread(work)
    assert all(isinstance(r, Published) for r in results)
    published = [cast("Published", r).event for r in results]
    # The cursor is assigned only once the loop appended the event: the call returned after that.
    assert [e.id for e in published] == [f"{emitter.epoch}-{n}" for n in (1, 2, 3)]
    assert [await r for r in results] == published
    assert [e.id for e in await history(channel, emitter.stream_id)] == [e.id for e in published]


async def test_eight_threads_at_once_lose_nothing(
    channel: AsyncStreamChannel, emitter: SSEEmitter
) -> None:
    barrier = threading.Barrier(8, timeout=10)

    def work(thread: int) -> list[str]:
        barrier.wait()
        ids = []
        for i in range(50):
            result = emitter.log(f"{thread}:{i}", thread=thread)
            assert isinstance(result, Published)
            ids.append(str(result.event.id))
        return ids

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(8) as pool:
        per_thread = await asyncio.gather(*(loop.run_in_executor(pool, work, t) for t in range(8)))
    events = await history(channel, emitter.stream_id)
    assert seqs(events) == list(range(1, 401))
    assert sorted(str(e.id) for e in events) == sorted(i for ids in per_thread for i in ids)
    for thread in range(8):
        mine = [m for m in messages(events) if m.startswith(f"{thread}:")]
        assert mine == [f"{thread}:{i}" for i in range(50)]


async def test_call_from_another_event_loop_in_another_thread(
    channel: AsyncStreamChannel, emitter: SSEEmitter
) -> None:
    async def elsewhere() -> list[StreamEvent]:
        first, second = emitter.log("a"), emitter.log("b")
        assert inspect.isawaitable(first)
        return list(await asyncio.gather(first, second))

    events = await asyncio.to_thread(asyncio.run, elsewhere())
    assert [e.id for e in events] == [f"{emitter.epoch}-1", f"{emitter.epoch}-2"]
    assert messages(await history(channel, emitter.stream_id)) == ["a", "b"]


# --- event contents and validation -----------------------------------------------------------


@pytest.mark.parametrize("percent", [-1, 101, math.nan, math.inf, True, "50", None])
async def test_progress_rejects_a_bad_percent(
    channel: AsyncStreamChannel, emitter: SSEEmitter, percent: Any
) -> None:
    with pytest.raises(InvalidEventError):
        emitter.progress(percent)
    assert await history(channel, emitter.stream_id) == []


async def test_progress_carries_step_only_when_given(emitter: SSEEmitter) -> None:
    assert (await emitter.progress(0)).data == {"percent": 0}
    assert (await emitter.progress(12.5, eta=3)).data == {"eta": 3, "percent": 12.5}
    assert (await emitter.progress(100, step="done")).data == {"percent": 100, "step": "done"}


async def test_complete_and_error_data(channel: AsyncStreamChannel) -> None:
    done, failed = SSEEmitter(channel), SSEEmitter(channel)
    await done.open()
    await failed.open()
    complete = await done.complete(success=False, x=1)
    assert (complete.type, complete.data) == ("complete", {"x": 1, "success": False})
    error = await failed.error("m", code=3)
    assert (error.type, error.data) == ("error", {"code": 3, "message": "m"})


@pytest.mark.parametrize("terminal", ["complete", "error"])
async def test_nothing_is_emitted_after_a_terminal_event(
    channel: AsyncStreamChannel, terminal: str
) -> None:
    emitter = SSEEmitter(channel)
    await emitter.open()
    open_before = not emitter.closed
    pending = emitter.complete() if terminal == "complete" else emitter.error("stop")
    assert open_before
    assert emitter.closed
    await pending
    calls: list[Callable[[], object]] = [
        lambda: emitter.log("late"),
        lambda: emitter.progress(1),
        lambda: emitter.complete(),
        lambda: emitter.error("again"),
    ]
    for call in calls:
        with pytest.raises(StreamClosedError):
            call()
    with pytest.raises(StreamClosedError):
        await asyncio.to_thread(lambda: emitter.log("late, from a thread"))
    late = StreamContext(emitter.stream_id, channel)
    await late.open()
    with pytest.raises(StreamClosedError):
        await late.log("late, from another emitter")
    assert [e.type for e in await history(channel, emitter.stream_id)] == [terminal]


async def test_non_json_field_is_refused_and_the_emitter_stays_usable(
    emitter: SSEEmitter,
) -> None:
    unserialisable = cast("Any", object())
    with pytest.raises(InvalidEventError):
        await emitter.log("x", obj=unserialisable)
    with pytest.raises(InvalidEventError):
        await asyncio.to_thread(lambda: emitter.log("x", obj=unserialisable))
    assert not emitter.closed
    assert (await emitter.log("fine")).id == f"{emitter.epoch}-1"


async def test_event_over_max_event_bytes_is_refused() -> None:
    emitter = SSEEmitter(make_channel(max_event_bytes=512))
    await emitter.open()
    with pytest.raises(EventTooLargeError):
        await emitter.log("x" * 1000)
    with pytest.raises(EventTooLargeError):
        await asyncio.to_thread(lambda: emitter.log("y" * 1000))
    assert (await emitter.log("x" * 100)).id == f"{emitter.epoch}-1"


async def test_a_refused_terminal_event_does_not_end_the_emitter() -> None:
    # The stream did not end (nothing was appended), so the emitter must still be able to end
    # it; otherwise neither the caller nor WorkerRunner can ever send the terminal event.
    channel = make_channel(max_event_bytes=512)
    emitter = SSEEmitter(channel)
    await emitter.open()
    with pytest.raises(EventTooLargeError):
        await emitter.complete(blob="x" * 1000)
    error = await emitter.error("result too large")
    assert error.id == f"{emitter.epoch}-1"
    assert [e.type for e in await history(channel, emitter.stream_id)] == ["error"]


# --- StreamContext, DeploymentEmitter --------------------------------------------------------


async def test_stream_context_publishes_into_an_existing_stream(
    channel: AsyncStreamChannel, emitter: SSEEmitter
) -> None:
    await emitter.log("from the emitter")
    context = StreamContext(emitter.stream_id, channel)
    assert isinstance(context, SSEEmitter)
    meta = await context.open()
    assert (meta.epoch, meta.last_seq) == (emitter.epoch, 1)
    assert (await context.log("from the context")).id == f"{emitter.epoch}-2"
    assert (await emitter.complete()).id == f"{emitter.epoch}-3"
    events = await history(channel, emitter.stream_id)
    assert [e.type for e in events] == ["log", "log", "complete"]
    assert messages(events[:2]) == ["from the emitter", "from the context"]


async def test_deployment_emitter_is_an_sse_emitter(channel: AsyncStreamChannel) -> None:
    assert issubclass(DeploymentEmitter, SSEEmitter)
    emitter = DeploymentEmitter(channel, owner="alice")
    assert isinstance(emitter, SSEEmitter)
    meta = await emitter.open()
    assert meta.owner == "alice"
    assert (await emitter.log("deploying")).id == f"{meta.epoch}-1"


# --- get_emitter -----------------------------------------------------------------------------


def owner_app(container: StreamingContainer) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/emitter")
    async def describe(emitter: DeploymentEmitter = Depends(get_emitter)) -> dict[str, Any]:
        return {
            "owner": emitter.owner,
            "kind": type(emitter).__name__,
            "stream_id": emitter.stream_id,
            "bound": emitter.channel is container.stream_channel(),
        }

    return app


async def describe_emitter(app: FastAPI) -> dict[str, Any]:
    async with lifespan(app), AsgiClient(app).stream("GET", "/emitter") as response:
        assert response.status == 200
        body: dict[str, Any] = orjson.loads(await response.read_all())
    return body


def memory_container() -> StreamingContainer:
    container = StreamingContainer()
    init_streaming(channel_config=ChannelConfig(), mode="memory", container=container)
    return container


@pytest.mark.parametrize(("identity", "owner"), [("alice", "alice"), (42, "42")])
async def test_get_emitter_owner_is_the_streaming_identity(identity: object, owner: str) -> None:
    container = memory_container()
    app = owner_app(container)

    async def current_user() -> object:
        return identity

    app.dependency_overrides[streaming_identity] = current_user
    body = await describe_emitter(app)
    assert body["owner"] == owner
    assert body["kind"] == "DeploymentEmitter"
    assert body["bound"] is True
    assert URL_SAFE.fullmatch(body["stream_id"])


async def test_get_emitter_owner_defaults_to_none(caplog: pytest.LogCaptureFixture) -> None:
    app = owner_app(memory_container())
    body = await describe_emitter(app)
    assert body["owner"] is None
    assert body["kind"] == "DeploymentEmitter"
    # a public stream by accident is worth one warning per app, not one per request
    await describe_emitter(app)
    warnings = [r for r in caplog.records if "no streaming_identity is configured" in r.message]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"


async def test_a_configured_identity_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = owner_app(memory_container())

    async def anonymous() -> None:
        return None  # the app's choice: this caller may create public streams

    app.dependency_overrides[streaming_identity] = anonymous
    assert (await describe_emitter(app))["owner"] is None
    assert "no streaming_identity" not in caplog.text
