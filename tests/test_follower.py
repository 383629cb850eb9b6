"""`AsyncStreamChannel` and `Follower` over both backends: replay then live, resume after a
cursor, in-band ``reset`` events, gap filling, and `SyncStreamChannel` from threads."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import pytest

from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
from streaming_mw.channels.base import Notice
from streaming_mw.channels.producing import ProducingBackend
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.channels.sync import SyncStreamChannel
from streaming_mw.config import ChannelConfig
from streaming_mw.emitters import Published, SSEEmitter
from streaming_mw.errors import EventTooLargeError, StreamNotFoundError
from streaming_mw.events import StreamEvent
from streaming_mw.sse import encode_stream_event
from streaming_mw.web.liveness import producer_liveness

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streaming_mw.channels import ChannelBackend, Follower, StreamMeta, Subscription
    from streaming_mw.channels.base import ProducerMark, Resync, StreamState
    from tests.helpers.channels import MakeBackend


class MakeChannel(Protocol):
    async def __call__(self, config: ChannelConfig | None = None) -> AsyncStreamChannel: ...


@pytest.fixture
def make_channel(make_backend: MakeBackend) -> MakeChannel:
    """Builds channels over started backends of one kind (see ``make_backend``)."""

    async def make(config: ChannelConfig | None = None) -> AsyncStreamChannel:
        config = config or ChannelConfig()
        return AsyncStreamChannel(await make_backend(config), config)

    return make


def log(n: int) -> StreamEvent:
    return StreamEvent("log", {"n": n})


def complete(n: int) -> StreamEvent:
    return StreamEvent("complete", {"n": n})


async def publish(channel: AsyncStreamChannel, stream_id: str, numbers: range) -> None:
    for n in numbers:
        assert await channel.publish(stream_id, log(n)) == n


async def take(follower: Follower, count: int) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for _ in range(count):
        event = await asyncio.wait_for(follower.next(10), 15)
        assert event is not None, f"no event after {[e.id for e in events]}"
        events.append(event)
    return events


async def drain(follower: Follower) -> list[StreamEvent]:
    """Every event up to the terminal one."""
    events: list[StreamEvent] = []
    while not follower.finished:
        events.extend(await take(follower, 1))
    return events


def ids(meta: StreamMeta, numbers: Sequence[int]) -> list[str | None]:
    return [f"{meta.epoch}-{n}" for n in numbers]


def resets(events: list[StreamEvent]) -> list[object]:
    return [e.data for e in events if e.type == "reset"]


async def test_follow_replays_history_then_goes_live(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    meta = await channel.create("s1", owner="alice")
    await publish(channel, "s1", range(1, 4))
    follower = await channel.follow("s1")
    assert (follower.stream_id, follower.owner, follower.resumed_from) == ("s1", "alice", None)
    replayed = await take(follower, 3)
    assert [e.id for e in replayed] == ids(meta, [1, 2, 3])
    assert [e.data for e in replayed] == [{"n": n} for n in (1, 2, 3)]
    assert follower.ready() is None
    await publish(channel, "s1", range(4, 6))
    assert await channel.publish("s1", complete(6)) == 6
    live = await drain(follower)
    assert [e.id for e in live] == ids(meta, [4, 5, 6])
    assert [e.type for e in live] == ["log", "log", "complete"]
    assert follower.finished
    assert await asyncio.wait_for(follower.next(None), 5) is None
    follower.aclose()
    follower.aclose()  # idempotent


async def test_follow_unknown_stream_fails(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    with pytest.raises(StreamNotFoundError):
        await channel.follow("unknown")


async def test_resume_strictly_after_the_cursor(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 8))
    for cursor in (0, 1, 4, 6):
        follower = await channel.follow("s1", f"{meta.epoch}-{cursor}")
        events = await take(follower, 7 - cursor)
        assert [e.id for e in events] == ids(meta, range(cursor + 1, 8))
        assert resets(events) == []
        follower.aclose()


async def test_up_to_date_cursor_waits_for_live_events(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 4))
    follower = await channel.follow("s1", f"{meta.epoch}-3")
    assert follower.resumed_from == f"{meta.epoch}-3"
    assert await follower.next(0.1) is None  # nothing published: a timeout, not an error
    await channel.publish("s1", log(4))
    [event] = await take(follower, 1)
    assert (event.type, event.id) == ("log", f"{meta.epoch}-4")
    follower.aclose()


@pytest.mark.parametrize("cursor", ["garbage", "abc-", "-1", "abc-x", "ABC-1", "beyond"])
async def test_unusable_cursor_resets_as_unknown(make_channel: MakeChannel, cursor: str) -> None:
    channel = await make_channel()
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 4))
    if cursor == "beyond":
        cursor = f"{meta.epoch}-9"
    follower = await channel.follow("s1", cursor)
    reset, *events = await take(follower, 4)
    assert (reset.type, reset.data, reset.id) == ("reset", {"reason": "unknown"}, None)
    assert [e.id for e in events] == ids(meta, [1, 2, 3])
    follower.aclose()


async def test_cursor_of_another_epoch_resets(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 4))
    follower = await channel.follow("s1", "0123456789ab-2")
    reset, *events = await take(follower, 4)
    assert (reset.type, reset.data) == ("reset", {"reason": "epoch_changed"})
    assert [e.id for e in events] == ids(meta, [1, 2, 3])
    follower.aclose()


@pytest.mark.parametrize(("cursor", "reset"), [(0, True), (3, True), (7, True), (8, False)])
async def test_cursor_older_than_history(
    make_channel: MakeChannel, cursor: int, reset: bool
) -> None:
    channel = await make_channel(ChannelConfig(history_size=5))
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 13))
    await channel.publish("s1", complete(13))  # retains 9..13
    follower = await channel.follow("s1", f"{meta.epoch}-{cursor}")
    events = await drain(follower)
    follower.aclose()
    assert resets(events) == ([{"reason": "expired"}] if reset else [])  # one reset at most
    assert (events[0].type == "reset") is reset  # and first
    assert [e.id for e in events if e.type != "reset"] == ids(meta, range(9, 14))


async def test_follower_after_the_end_gets_history_and_finishes(
    make_channel: MakeChannel,
) -> None:
    channel = await make_channel()
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 3))
    await channel.publish("s1", complete(3))
    follower = await channel.follow("s1")
    events = await drain(follower)
    assert [e.id for e in events] == ids(meta, [1, 2, 3])
    assert events[-1].is_terminal
    assert follower.finished
    assert await asyncio.wait_for(follower.next(None), 5) is None
    follower.aclose()


async def test_resume_after_the_terminal_event_finishes_at_once(
    make_channel: MakeChannel,
) -> None:
    channel = await make_channel()
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 3))
    await channel.publish("s1", complete(3))
    follower = await channel.follow("s1", f"{meta.epoch}-3")  # a reconnect after the end
    try:
        # Nothing can follow a terminal event: waiting would hang the client until idle timeout.
        assert await asyncio.wait_for(follower.next(None), 5) is None
        assert follower.finished
    finally:
        follower.aclose()


async def test_oversized_event_is_refused(make_channel: MakeChannel) -> None:
    channel = await make_channel(ChannelConfig(max_event_bytes=200))
    await channel.create("s1")
    with pytest.raises(EventTooLargeError) as info:
        await channel.publish("s1", StreamEvent("log", {"text": "x" * 300}))
    assert info.value.limit == 200
    meta = await channel.meta("s1")
    assert meta is not None
    assert meta.last_seq == 0
    assert list(await channel.backend.read("s1", 0, 10)) == []
    assert await channel.publish("s1", log(1)) == 1


async def test_concurrent_followers_at_random_moments(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    rng = random.Random(20240611)
    for trial in range(50):
        stream_id = f"t{trial}"
        meta = await channel.create(stream_id)
        total = rng.randint(1, 30)

        async def publisher(stream_id: str = stream_id, total: int = total) -> None:
            for n in range(1, total + 1):
                assert await channel.publish(stream_id, complete(n) if n == total else log(n)) == n
                for _ in range(rng.randint(0, 3)):
                    await asyncio.sleep(0)

        task = asyncio.create_task(publisher())
        readers: list[tuple[int, asyncio.Task[list[StreamEvent]], Follower]] = []
        for _ in range(3):
            for _ in range(rng.randint(0, 12)):
                await asyncio.sleep(0)
            current = await channel.meta(stream_id)
            assert current is not None
            after = min(rng.randint(0, current.last_seq), total - 1)
            cursor = None if after == 0 and rng.random() < 0.5 else f"{meta.epoch}-{after}"
            follower = await channel.follow(stream_id, cursor)
            readers.append((after, asyncio.create_task(drain(follower)), follower))
        await asyncio.wait_for(task, 20)
        for after, reader, follower in readers:
            events = await asyncio.wait_for(reader, 20)
            follower.aclose()
            expected = range(after + 1, total + 1)
            assert [e.id for e in events] == ids(meta, expected), (trial, after, total)
            assert [e.data for e in events] == [{"n": n} for n in expected]


class _DroppingSubscription:
    def __init__(self, inner: Subscription, drop: set[int]) -> None:
        self.inner = inner
        self.drop = drop

    async def get(self, wait: float | None = None) -> Notice | Resync | None:
        while True:
            item = await self.inner.get(wait)
            if not (isinstance(item, Notice) and item.seq in self.drop):
                return item

    def close(self) -> None:
        self.inner.close()


class DroppingBackend:
    """Delegates to ``inner`` but loses the live notifications of the ``drop`` seqs."""

    def __init__(self, inner: ChannelBackend, drop: set[int]) -> None:
        self.inner = inner
        self.drop = drop

    async def create(
        self, stream_id: str, *, owner: str | None = None, job_id: str | None = None
    ) -> StreamMeta:
        return await self.inner.create(stream_id, owner=owner, job_id=job_id)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        return await self.inner.meta(stream_id)

    async def append(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        return await self.inner.append(
            stream_id, payload, final_state=final_state, producer=producer
        )

    async def read(self, stream_id: str, after_seq: int, limit: int) -> Sequence[tuple[int, bytes]]:
        return await self.inner.read(stream_id, after_seq, limit)

    async def subscribe(self, stream_id: str) -> Subscription:
        return _DroppingSubscription(await self.inner.subscribe(stream_id), self.drop)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_gap_in_live_delivery_is_filled_from_history(make_channel: MakeChannel) -> None:
    plain = await make_channel()
    channel = AsyncStreamChannel(DroppingBackend(plain.backend, {3, 4, 7}), plain.config)
    meta = await channel.create("s1")
    await publish(channel, "s1", range(1, 3))
    follower = await channel.follow("s1")
    assert [e.id for e in await take(follower, 2)] == ids(meta, [1, 2])
    await publish(channel, "s1", range(3, 6))  # 3 and 4 are lost live, 5 reveals the gap
    assert [e.id for e in await take(follower, 3)] == ids(meta, [3, 4, 5])
    await publish(channel, "s1", range(6, 8))
    await channel.publish("s1", complete(8))
    assert [e.id for e in await drain(follower)] == ids(meta, [6, 7, 8])
    follower.aclose()


async def test_sync_channel_from_threads(make_channel: MakeChannel) -> None:
    channel = await make_channel()
    loop = asyncio.get_running_loop()
    sync = SyncStreamChannel(channel, loop, timeout=20)
    meta = await asyncio.to_thread(sync.create, "s1")

    def work(thread: int) -> list[int]:
        return [sync.publish("s1", StreamEvent("log", {"t": thread, "i": i})) for i in range(25)]

    with ThreadPoolExecutor(8) as pool:
        jobs = [loop.run_in_executor(pool, work, thread) for thread in range(8)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), 30)
    assert sorted(seq for seqs in results for seq in seqs) == list(range(1, 201))
    assert all(seqs == sorted(seqs) for seqs in results)
    follower = await channel.follow("s1")
    events = await take(follower, 200)
    follower.aclose()
    assert [e.id for e in events] == ids(meta, range(1, 201))
    for thread, seqs in enumerate(results):
        mine = [e for e in events if isinstance(e.data, dict) and e.data["t"] == thread]
        assert [e.data for e in mine] == [{"t": thread, "i": i} for i in range(25)]
        assert [e.id for e in mine] == ids(meta, seqs)


async def test_followers_of_one_stream_share_each_decoded_event_and_its_frame(
    make_channel: MakeChannel,
) -> None:
    channel = await make_channel()
    await channel.create("shared")
    await publish(channel, "shared", range(1, 4))
    first, second = [await channel.follow("shared") for _ in range(2)]
    live = [await channel.follow("shared", f"{first._epoch}-3") for _ in range(2)]
    await publish(channel, "shared", range(4, 5))
    try:
        a, b = await take(first, 3), await take(second, 3)
        assert [e.id for e in a] == [e.id for e in b]
        assert all(x is y for x, y in zip(a, b, strict=True))  # decoded once
        frames = [first.frame(e) for e in a]
        assert frames == [encode_stream_event(e) for e in a]
        assert all(f is second.frame(e) for f, e in zip(frames, a, strict=True))  # framed once
        [x], [y] = [await take(f, 1) for f in live]
        assert x is y
        assert x.data == {"n": 4}
        stale = await channel.follow("shared", "not-a-cursor")  # a reset is made per follower
        [reset] = await take(stale, 1)
        assert reset.type == "reset"
        assert stale.frame(reset) == encode_stream_event(reset)
        stale.aclose()
    finally:
        for follower in (first, second, *live):
            follower.aclose()


# worker threads publishing through an emitter (the seed's sync worker) -----------------------


def accepted(result: object) -> StreamEvent:
    """What an emitter's method returned in a worker thread: the event, already published."""
    assert isinstance(result, Published)
    return result.event


@pytest.mark.timeout(60)
async def test_worker_thread_events_keep_the_cursor_contract(make_channel: MakeChannel) -> None:
    """A sync worker's events (appended on the loop at once in memory, from the thread with a
    synchronous client on Redis) get the ids a follower sees, once each, in order; a resume
    from any of them goes on from there."""
    channel = await make_channel()
    emitter = SSEEmitter(channel, stream_id="worker")
    meta = await emitter.open()
    follower = await channel.follow("worker")

    def work() -> list[str | None]:
        return [accepted(emitter.progress(n, n=n)).id for n in range(40)]

    returned = await asyncio.to_thread(work)
    assert returned == ids(meta, range(1, 41))
    events = await take(follower, 40)
    assert [e.id for e in events] == returned
    assert [e.data for e in events] == [{"n": n, "percent": n} for n in range(40)]
    assert await asyncio.wait_for(follower.next(0.2), 5) is None  # no duplicate (no echo twice)
    follower.aclose()
    resumed = await channel.follow("worker", returned[24])
    assert [e.id for e in await take(resumed, 15)] == returned[25:]
    resumed.aclose()


@pytest.mark.timeout(60)
async def test_worker_thread_events_follow_events_in_flight_on_the_loop(
    make_channel: MakeChannel,
) -> None:
    """Events emitted on the loop and not yet published come first: a thread's later event
    queues behind them instead of overtaking them."""
    channel = await make_channel()
    emitter = SSEEmitter(channel, stream_id="mixed")
    meta = await emitter.open()
    follower = await channel.follow("mixed")
    for n in range(5):
        emitter.log("loop", n=n)  # tasks, started at once and not awaited
    event = await asyncio.to_thread(lambda: accepted(emitter.log("thread", n=5)))
    assert event.id == f"{meta.epoch}-6"
    events = await take(follower, 6)
    assert [e.data for e in events] == [
        {"n": n, "message": "loop" if n < 5 else "thread", "level": "info"} for n in range(6)
    ]
    follower.aclose()


@pytest.mark.timeout(60)
async def test_worker_thread_event_after_the_stream_was_lost(make_channel: MakeChannel) -> None:
    """A thread's append that finds its stream gone (Redis lost it) creates it again, through
    the loop, and the event opens the new incarnation."""
    channel = await make_channel()
    emitter = SSEEmitter(channel, stream_id="lost")
    first = await emitter.open()
    await asyncio.to_thread(lambda: emitter.log("before"))
    backend = channel.backend
    if isinstance(backend, RedisChannelBackend):
        keys = backend.keys("lost")
        await backend._client.delete(keys.meta)  # one slot: the hash tag
        await backend._client.delete(keys.events)
    else:
        assert isinstance(backend, MemoryChannelBackend)
        backend._streams.clear()
    event = await asyncio.to_thread(lambda: accepted(emitter.log("after")))
    meta = await channel.meta("lost")
    assert meta is not None
    assert meta.epoch != first.epoch
    assert event.id == f"{meta.epoch}-1"


@pytest.mark.redis
@pytest.mark.timeout(60)
async def test_redis_worker_threads_publish_without_the_event_loop(
    make_channel: MakeChannel,
) -> None:
    """On Redis a worker thread appends with its own synchronous client: its events are
    published while the event loop is busy, and reach the follower once the loop is back."""
    channel = await make_channel()
    if not isinstance(channel.backend, RedisChannelBackend):
        pytest.skip("memory streams live on the loop: a thread must hand its events to it")
    emitter = SSEEmitter(channel, stream_id="busy-loop")
    meta = await emitter.open()
    follower = await channel.follow("busy-loop")
    results: list[str | None] = []
    thread = threading.Thread(
        target=lambda: results.extend(accepted(emitter.log("x", n=n)).id for n in range(5))
    )
    thread.start()
    thread.join(10)  # blocks the event loop meanwhile: a hop through it could not finish
    assert not thread.is_alive()
    assert results == ids(meta, range(1, 6))
    assert [e.id for e in await take(follower, 5)] == results
    follower.aclose()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cursor", ["start", "head"])
async def test_follower_at_the_head_gets_a_burst_past_the_history(
    make_channel: MakeChannel, cursor: str
) -> None:
    """A follower that starts at the stream's head reads no history: a burst longer than the
    retained history, published before it reads anything, still arrives whole, without a
    ``reset`` (a publishing thread can outrun the follower's first read)."""
    channel = await make_channel(ChannelConfig(history_size=4))
    meta = await channel.create("burst")
    if cursor == "head":
        await publish(channel, "burst", range(1, 3))
    last = None if cursor == "start" else f"{meta.epoch}-2"
    follower = await channel.follow("burst", last)
    first = 1 if cursor == "start" else 3
    await publish(channel, "burst", range(first, first + 10))
    events = await take(follower, 10)
    assert [e.id for e in events] == ids(meta, range(first, first + 10))
    follower.aclose()


@pytest.mark.timeout(60)
async def test_followers_of_one_stream_ask_for_its_producer_once(
    make_channel: MakeChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer checks of many idle followers of one stream, due at the same moment, are
    one backend call: 10,000 followers must not queue 10,000 Redis calls."""
    channel = await make_channel()
    await channel.create("watched")
    backend = channel.backend
    assert isinstance(backend, ProducingBackend)
    asked: list[str] = []
    real = backend.producer_alive

    async def producer_alive(stream_id: str) -> bool | None:
        asked.append(stream_id)
        return await real(stream_id)

    monkeypatch.setattr(backend, "producer_alive", producer_alive)
    checks = [producer_liveness(channel, "watched") for _ in range(50)]
    assert all(check is not None for check in checks)
    ended = await asyncio.gather(*(check() for check in checks if check is not None))
    assert ended == [None] * 50  # not a generated stream: nothing to watch, nor to end
    assert asked == ["watched"]
