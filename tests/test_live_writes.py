"""Live events written to a waiting follower from the fan-out itself (`EventStreamResponse`'s
sink), without waking its task: order, bursts, keep-alive timing, a stuck client, a drain, a
failed write, and the liveness checks a stream without a producer no longer needs.

Each case runs `tests.test_sse_response.FollowApp` (a private memory channel) under the raw ASGI
harness, and counts the events `Follower.next` hands out: those are the ones the task woke for.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, EventStreamResponse, StreamEvent
from streaming_mw.channels import AsyncStreamChannel, Follower, MemoryChannelBackend
from streaming_mw.channels.base import Notice, QueueSubscription
from streaming_mw.channels.shared import SharedEvents
from streaming_mw.emitters import SSEEmitter
from streaming_mw.sse import PING, SSEComment, SSEEvent, SSEParser
from streaming_mw.web import responses
from tests.apps.deploy import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.leases import eventually
from tests.test_sse_response import (
    SPECS,
    FollowApp,
    data,
    gated,
    memory_container,
    seq,
    until_terminal,
)

if TYPE_CHECKING:
    from tests.helpers.asgi import SpecVersion


@pytest.fixture
def woken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What `Follower.next` handed to a relay, each time its task woke: the event's type, or
    ``-`` for a wait that ended without one."""
    handed: list[str] = []
    real = Follower.next

    async def counting(self: Follower, wait: float | None) -> StreamEvent | None:
        event = await real(self, wait)
        handed.append("-" if event is None else event.type)
        return event

    monkeypatch.setattr(Follower, "next", counting)
    return handed


def events_of(body: bytes) -> list[SSEEvent]:
    return [item for item in SSEParser().feed(body) if isinstance(item, SSEEvent)]


@SPECS
async def test_live_events_reach_a_waiting_follower_without_waking_it(
    spec: SpecVersion, woken: list[str]
) -> None:
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    async with AsgiClient(app, spec_version=spec).stream("GET", "/") as r:
        got = []
        for i in range(20):
            await emitter.log(str(i))
            got.append(await r.read_event())  # one at a time: each finds the relay waiting
        await emitter.complete()
        got += await until_terminal(r)
    assert [seq(e) for e in got] == list(range(1, 22))
    assert [data(e)["message"] for e in got[:-1]] == [str(i) for i in range(20)]
    assert woken == ["complete"]  # the end of the stream goes the task's way, which ends it
    response = app.responses[0]
    assert (response.events_sent, response.close_reason) == (21, "completed")


async def test_a_burst_published_in_a_task_leaves_in_one_write(woken: list[str]) -> None:
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    async with AsgiClient(app).stream("GET", "/") as r:
        await emitter.log("first")
        assert (await r.read_event()).event == "log"
        for i in range(10):  # the memory backend appends without yielding: one loop turn
            await app.channel.publish(emitter.stream_id, StreamEvent("log", {"i": i}))
        chunk = await r.read_chunk()
    assert [data(e)["i"] for e in events_of(chunk)] == list(range(10))
    assert woken == []


async def test_a_burst_from_a_loop_callback_leaves_at_once_then_in_one_write(
    woken: list[str],
) -> None:
    """No task runs a plain callback (a worker thread's events handed to the loop): the first
    frame is written from the delivery itself, the rest of the turn together after it."""
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    payloads = [StreamEvent("log", {"i": i}).to_bytes() for i in range(10)]

    def burst() -> None:
        for payload in payloads:
            app.backend.append_nowait(emitter.stream_id, payload)

    async with AsgiClient(app).stream("GET", "/") as r:
        await emitter.log("first")
        assert (await r.read_event()).event == "log"
        asyncio.get_running_loop().call_soon(burst)
        first, rest = await r.read_chunk(), await r.read_chunk()
    assert [data(e)["i"] for e in events_of(first)] == [0]
    assert [data(e)["i"] for e in events_of(rest)] == list(range(1, 10))
    assert woken == []


async def test_keepalive_pings_count_silence_from_the_last_live_event(woken: list[str]) -> None:
    app = FollowApp(ChannelConfig(ping_interval=1.0, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    async with AsgiClient(app).stream("GET", "/") as r:
        chunks: list[bytes] = []
        for i in range(30):  # 1.5 s of events 50 ms apart: never 1 s of silence
            await emitter.log(str(i))
            chunks.append(await r.read_chunk())
            await asyncio.sleep(0.05)
        last_event = time.monotonic()
        assert await r.read_chunk(timeout=5) == PING
        silence = time.monotonic() - last_event
        # One wait ended, for the ping: each live event restarted the wait under way.
        assert woken == ["-"]
    assert all(PING not in chunk for chunk in chunks)
    assert [data(e)["message"] for e in events_of(b"".join(chunks))] == [str(i) for i in range(30)]
    assert silence >= 1.0 - 0.05  # the ping came after a whole interval of silence, not before


@SPECS
async def test_a_stuck_write_hands_later_events_to_the_task_in_order(
    spec: SpecVersion, woken: list[str]
) -> None:
    app = FollowApp(ChannelConfig(subscriber_queue_size=1000, ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    gate, blocked = asyncio.Event(), asyncio.Event()
    async with AsgiClient(gated(app, gate, blocked), spec_version=spec).stream("GET", "/") as r:
        await emitter.log("0")
        async with asyncio.timeout(5):
            await blocked.wait()  # the live write of event 1 is stuck in the server
        for i in range(1, 100):
            await emitter.log(str(i))
            await asyncio.sleep(0)
        await emitter.complete()
        gate.set()
        got = await until_terminal(r)
    assert [seq(e) for e in got] == list(range(1, 102))
    assert [data(e)["message"] for e in got[:-1]] == [str(i) for i in range(100)]
    assert woken[0] == "log"  # the write under way sent the next events the task's way
    assert app.responses[0].close_reason == "completed"


async def test_a_drain_during_a_stuck_live_write_ends_after_that_whole_event() -> None:
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    gate, blocked = asyncio.Event(), asyncio.Event()
    async with AsgiClient(gated(app, gate, blocked)).stream("GET", "/") as r:
        await emitter.log("whole")
        async with asyncio.timeout(5):
            await blocked.wait()
        response = app.responses[0]
        response.begin_drain()
        await emitter.log("after the drain")  # stays in history for the next server
        gate.set()
        body = await r.read_all()
        await r.wait_finished()
    items = SSEParser().feed(body)
    assert [data(e)["message"] for e in items if isinstance(e, SSEEvent)] == ["whole"]
    assert isinstance(items[-1], SSEComment)
    assert items[-1].text == "shutdown: resume elsewhere"
    assert response.close_reason == "shutdown"


async def test_a_failed_live_write_ends_the_follow_as_a_disconnect(woken: list[str]) -> None:
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    subscribers = app.backend._streams[emitter.stream_id].subscribers
    async with AsgiClient(app, spec_version="2.4").stream("GET", "/") as r:
        await emitter.log("first")
        assert (await r.read_event()).event == "log"
        r.disconnect()  # ASGI 2.4: only a failing send tells the app
        await emitter.log("fails in the server's send, which wakes the relay to end")
        await r.wait_finished(timeout=2)
    assert woken == ["-"]  # both events went live; the failure's wake-up ended the relay
    assert app.responses[0].close_reason == "client_disconnect"
    assert app.reasons == ["client_disconnect"]
    assert not subscribers


async def test_a_stream_without_a_producer_is_not_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(responses, "LIVENESS_EVERY", 0.02)
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    asked: list[float] = []

    async def no_producer() -> bool | None:
        asked.append(time.monotonic())
        return None

    follower = await app.channel.follow(emitter.stream_id)
    response = EventStreamResponse(follower, app.channel.config, liveness=no_producer)

    async def one_follow(scope: object, receive: object, send: object) -> None:
        await response(scope, receive, send)  # type: ignore[arg-type]

    async with AsgiClient(one_follow).stream("GET", "/") as r:
        await asyncio.sleep(0.3)  # 15 silent periods of 20 ms
        await emitter.log("still followed")
        assert (await r.read_event()).event == "log"
    assert len(asked) == 1


async def memory_stream() -> tuple[MemoryChannelBackend, AsyncStreamChannel, SSEEmitter]:
    """A private memory channel and an open emitter on it (no middleware, no container)."""
    config = ChannelConfig()
    backend = MemoryChannelBackend(config)
    channel = AsyncStreamChannel(backend, config)
    emitter = SSEEmitter(channel)
    await emitter.open()
    return backend, channel, emitter


async def test_offer_takes_only_a_caught_up_followers_next_event_and_never_its_last() -> None:
    backend, channel, emitter = await memory_stream()
    first = await emitter.log("1")
    replaying = await channel.follow(emitter.stream_id)  # no cursor: history first
    follower = await channel.follow(emitter.stream_id, first.id)  # caught up after event 1
    await emitter.log("2")
    await emitter.complete()
    (_, p2), (_, p3) = await backend.read(emitter.stream_id, 1, 10)
    epoch = str(emitter.epoch)

    assert replaying.offer(Notice(epoch, 2, p2)) is None
    assert follower.offer(Notice(epoch, 3, p3)) is None  # a gap: history fills it
    assert follower.offer(Notice("another", 2, p2)) is None  # a new incarnation: resync
    taken = follower.offer(Notice(epoch, 2, p2))
    assert taken is not None
    event, frame = taken
    assert (event.id, event.data) == (f"{epoch}-2", {"message": "2", "level": "info"})
    assert frame == follower.frame(event)
    assert follower.offer(Notice(epoch, 2, p2)) is None  # handed out once
    assert follower.offer(Notice(epoch, 3, p3)) is None  # the terminal: the relay's way
    last = await follower.next(1.0)  # ...where `next` finds it, after event 2
    assert last is not None
    assert (last.id, last.type, follower.finished) == (f"{epoch}-3", "complete", True)


async def test_a_failing_live_write_path_leaves_the_event_to_the_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, woken: list[str]
) -> None:
    def broken(self: EventStreamResponse, notice: Notice) -> bool:
        raise RuntimeError("a bug in the live path")

    monkeypatch.setattr(EventStreamResponse, "_take_live", broken)
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    async with AsgiClient(app).stream("GET", "/") as r:
        for i in range(3):
            await emitter.log(str(i))
            assert data(await r.read_event())["message"] == str(i)
    assert woken == ["log"] * 3
    assert [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"] == [
        "a live write failed; this follower's events go its own way"  # once, not per event
    ]


async def test_a_frame_that_fails_once_costs_no_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The live path counts an event as handed out only once its frame is made: a failure
    before that leaves the event to the task, never a gap in the client's ids."""
    real = SharedEvents.frame
    failed: list[str] = []

    def frame_failing_once(self: SharedEvents, stream_id: str, event: StreamEvent) -> bytes:
        if event.id is not None and event.id.endswith("-2") and not failed:
            failed.append(event.id)
            raise RuntimeError("encoding failed once")
        return real(self, stream_id, event)

    monkeypatch.setattr(SharedEvents, "frame", frame_failing_once)
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    async with AsgiClient(app).stream("GET", "/") as r:
        got = []
        for i in range(4):
            await emitter.log(str(i))
            got.append(await r.read_event())
    assert failed == [f"{emitter.epoch}-2"]
    assert [seq(e) for e in got] == [1, 2, 3, 4]
    assert [data(e)["message"] for e in got] == ["0", "1", "2", "3"]


@SPECS
async def test_under_the_middleware_live_events_are_counted_and_a_lost_client_is_released(
    spec: SpecVersion, woken: list[str]
) -> None:
    container = memory_container(ping_interval=30, retry_ms=None)  # the count: events only
    app = build_app(container)
    registry = container.stream_registry()

    async def released() -> bool:
        return registry.count() == 0

    async with lifespan(app):
        emitter = SSEEmitter(container.stream_channel())
        await emitter.open()
        path = f"/streams/{emitter.stream_id}"
        async with AsgiClient(app, spec_version=spec).stream("GET", path) as r:
            for i in range(5):
                await emitter.log(str(i))
                assert data(await r.read_event())["message"] == str(i)
            (active,) = registry.streams()
            assert active.events == 5  # counted by the middleware's send, driven live
            r.disconnect()
            await emitter.log("after the client left")
            await r.wait_finished(timeout=2)
        await eventually(released)
    assert "log" not in woken  # every event went live


async def test_an_interrupt_between_two_waits_ends_the_next_one_at_once() -> None:
    """A live write can fail while the relay is between waits (reading history, asking for
    the producer): the next wait must end at once, or the failure waits for the next ping."""
    subscription = QueueSubscription(8, lambda _: None)
    subscription.interrupt()  # nobody waits yet
    async with asyncio.timeout(5):  # a lost interrupt would wait for ever
        assert await subscription.get(None) is None
    subscription.deliver(Notice("e", 1, b"{}"))
    assert await subscription.get(30.0) == Notice("e", 1, b"{}")  # used up: waits as usual
    assert await subscription.get(0.01) is None


async def test_no_live_event_is_taken_while_a_resync_reads_the_meta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taken during the resync's meta read, an event would be past that meta and look like a
    stream that went back (`reset {unknown}`, seen with the cluster's resubscriptions)."""
    backend, channel, emitter = await memory_stream()
    first = await emitter.log("1")
    follower = await channel.follow(emitter.stream_id, first.id)
    real_meta, gate, reading = backend.meta, asyncio.Event(), asyncio.Event()

    async def slow_meta(stream_id: str) -> Any:
        meta = await real_meta(stream_id)  # read before the next append, answered after it
        reading.set()
        await gate.wait()
        return meta

    monkeypatch.setattr(backend, "meta", slow_meta)
    resync = asyncio.create_task(follower._resync())
    await reading.wait()
    await emitter.log("2")
    (_, p2), *_ = await backend.read(emitter.stream_id, 1, 10)
    assert follower.offer(Notice(str(emitter.epoch), 2, p2)) is None  # left to `next`
    gate.set()
    await resync
    event = await follower.next(1.0)
    assert event is not None
    assert (event.type, event.id) == ("log", f"{emitter.epoch}-2")  # no reset
