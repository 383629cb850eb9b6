"""Live events written to a waiting follower from the fan-out itself (`EventStreamResponse`'s
sink), without waking its task: order, bursts, keep-alive timing, a stuck client, a drain, a
failed write, and the liveness checks a stream without a producer no longer needs.

Each case runs `tests.test_sse_response.FollowApp` (a private memory channel) under the raw ASGI
harness, and counts the events `Follower.next` hands out: those are the ones the task woke for.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from streaming_mw import ChannelConfig, EventStreamResponse, StreamEvent
from streaming_mw.channels import AsyncStreamChannel, Follower, MemoryChannelBackend
from streaming_mw.channels.base import Notice
from streaming_mw.emitters import SSEEmitter
from streaming_mw.sse import PING, SSEComment, SSEEvent, SSEParser
from streaming_mw.web import responses
from tests.helpers.asgi import AsgiClient
from tests.test_sse_response import SPECS, FollowApp, data, gated, seq, until_terminal

if TYPE_CHECKING:
    from tests.helpers.asgi import SpecVersion


@pytest.fixture
def woken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The event types `Follower.next` handed to a relay (each one woke its task)."""
    handed: list[str] = []
    real = Follower.next

    async def counting(self: Follower, wait: float | None) -> StreamEvent | None:
        event = await real(self, wait)
        if event is not None:
            handed.append(event.type)
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


async def test_a_burst_in_one_loop_turn_leaves_at_once_then_in_one_write(
    woken: list[str],
) -> None:
    app = FollowApp(ChannelConfig(ping_interval=30, max_idle_time=60))
    emitter = app.emitter
    await emitter.open()
    async with AsgiClient(app).stream("GET", "/") as r:
        await emitter.log("first")
        assert (await r.read_event()).event == "log"
        for i in range(10):  # the memory backend appends without yielding: one loop turn
            await app.channel.publish(emitter.stream_id, StreamEvent("log", {"i": i}))
        first, rest = await r.read_chunk(), await r.read_chunk()
    assert [data(e)["i"] for e in events_of(first)] == [0]  # at once, from the delivery
    assert [data(e)["i"] for e in events_of(rest)] == list(range(1, 10))  # the turn's end
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
    assert all(PING not in chunk for chunk in chunks)
    assert [data(e)["message"] for e in events_of(b"".join(chunks))] == [str(i) for i in range(30)]
    assert silence >= 1.0 - 0.05  # the ping came after a whole interval of silence, not before
    assert woken == []


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


async def test_a_failed_live_write_ends_the_follow_as_a_disconnect() -> None:
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


async def test_offer_takes_only_a_caught_up_followers_next_event_and_never_its_last() -> None:
    config = ChannelConfig()
    backend = MemoryChannelBackend(config)
    channel = AsyncStreamChannel(backend, config)
    emitter = SSEEmitter(channel)
    await emitter.open()
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
    assert (taken.id, taken.data) == (f"{epoch}-2", {"message": "2", "level": "info"})
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
        "a live write failed; the event goes the follower's own way"
    ] * 3
