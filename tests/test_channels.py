"""The `ChannelBackend` contract, run against `MemoryChannelBackend` and `RedisChannelBackend`,
plus the Redis key layout and `SyncRedisChannel` publishing from threads and processes."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

from streaming_mw._redis import make_client
from streaming_mw.channels import AsyncStreamChannel
from streaming_mw.channels.base import Notice, ProducerMark, StreamState
from streaming_mw.channels.memory import MemoryChannelBackend
from streaming_mw.channels.redis import RedisChannelBackend, SyncRedisChannel
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.errors import (
    ConfigurationError,
    SlowConsumerError,
    StreamClosedError,
    StreamNotFoundError,
)
from streaming_mw.events import StreamEvent
from tests.helpers.leases import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streaming_mw.channels import Follower, Subscription
    from streaming_mw.channels.base import Resync, StreamMeta
    from tests.helpers.channels import MakeBackend


def payload(n: int) -> bytes:
    return f"event-{n}".encode()


def notice(meta: StreamMeta, n: int) -> Notice:
    return Notice(meta.epoch, n, payload(n))


async def get(subscription: Subscription) -> Notice | Resync:
    item = await asyncio.wait_for(subscription.get(), 10)
    assert item is not None  # no wait given: it waits for an item
    return item


async def nothing_queued(subscription: Subscription) -> bool:
    return await subscription.get(0.05) is None


async def test_get_with_a_wait_returns_none_then_items_in_order(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    meta = await backend.create("waits")
    subscription = await backend.subscribe("waits")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await subscription.get(0.1) is None
    assert loop.time() - started >= 0.09
    for n in (1, 2):
        await backend.append("waits", payload(n))
    assert await subscription.get(5) == notice(meta, 1)
    assert await subscription.get(5) == notice(meta, 2)
    assert await subscription.get(0.05) is None  # the timer from the first wait re-armed
    pending = asyncio.create_task(subscription.get(30))  # arms a timer 30 s out
    await asyncio.sleep(0.05)
    await backend.append("waits", payload(3))
    assert await asyncio.wait_for(pending, 10) == notice(meta, 3)
    started = loop.time()
    assert await asyncio.wait_for(subscription.get(0.1), 5) is None  # not after 30 s
    assert loop.time() - started < 2
    waiter = asyncio.create_task(subscription.get())  # no wait: never times out
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await backend.append("waits", payload(4))
    assert await asyncio.wait_for(waiter, 10) == notice(meta, 4)
    subscription.close()


async def test_create_is_idempotent_and_keeps_epoch_and_owner(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    first = await backend.create("s1", owner="alice", job_id="job-1")
    again = await backend.create("s1", owner="bob", job_id="job-2")
    assert (first.stream_id, first.state, first.last_seq, first.first_seq) == (
        "s1", StreamState.RUNNING, 0, 0,
    )  # fmt: skip
    assert again.epoch == first.epoch
    assert first.owner == again.owner == "alice"
    assert first.job_id == again.job_id == "job-1"
    assert await backend.meta("s1") == first
    other = await backend.create("s2")
    assert (other.owner, other.job_id) == (None, None)
    assert other.epoch != first.epoch
    assert await backend.meta("unknown") is None


async def test_append_numbers_contiguously(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.create("s1")
    assert [await backend.append("s1", payload(n)) for n in range(1, 8)] == list(range(1, 8))
    meta = await backend.meta("s1")
    assert meta is not None
    assert (meta.first_seq, meta.last_seq, meta.ended) == (1, 7, False)
    assert list(await backend.read("s1", 0, 100)) == [(n, payload(n)) for n in range(1, 8)]
    with pytest.raises(StreamNotFoundError):
        await backend.append("unknown", b"x")


@pytest.mark.parametrize("final", [StreamState.DONE, StreamState.ERROR])
async def test_terminal_append_ends_the_stream(
    make_backend: MakeBackend, final: StreamState
) -> None:
    backend = await make_backend()
    await backend.create("s1")
    assert await backend.append("s1", payload(1)) == 1
    assert await backend.append("s1", payload(2), final_state=final) == 2
    meta = await backend.meta("s1")
    assert meta is not None
    assert (meta.state, meta.ended, meta.last_seq) == (final, True, 2)
    with pytest.raises(StreamClosedError):
        await backend.append("s1", payload(3))
    with pytest.raises(StreamClosedError):
        await backend.append("s1", payload(3), final_state=StreamState.DONE)
    assert [seq for seq, _ in await backend.read("s1", 0, 10)] == [1, 2]
    again = await backend.create("s1")  # create on an ended stream changes nothing
    assert (again.state, again.last_seq, again.epoch) == (final, 2, meta.epoch)


async def test_read_pages(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.create("s1")
    for n in range(1, 26):
        await backend.append("s1", payload(n))
    pages = [[seq for seq, _ in await backend.read("s1", after, 10)] for after in (0, 10, 20, 25)]
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26)), []]
    assert list(await backend.read("s1", 3, 2)) == [(4, payload(4)), (5, payload(5))]
    assert list(await backend.read("s1", 99, 10)) == []
    assert list(await backend.read("unknown", 0, 10)) == []


async def test_history_is_bounded_exactly(make_backend: MakeBackend) -> None:
    backend = await make_backend(ChannelConfig(history_size=10))
    await backend.create("s1")
    for n in range(1, 31):
        await backend.append("s1", payload(n))
    assert list(await backend.read("s1", 0, 100)) == [(n, payload(n)) for n in range(21, 31)]
    assert [seq for seq, _ in await backend.read("s1", 5, 3)] == [21, 22, 23]
    meta = await backend.meta("s1")
    assert meta is not None
    assert (meta.first_seq, meta.last_seq) == (21, 30)


async def test_history_expires_after_ttl(make_backend: MakeBackend) -> None:
    backend = await make_backend(ChannelConfig(history_ttl_seconds=0.5))
    await backend.create("s1")
    await backend.append("s1", payload(1))
    await backend.append("s1", payload(2), final_state=StreamState.DONE)
    assert await backend.meta("s1") is not None

    async def gone() -> bool:
        return await backend.meta("s1") is None

    await eventually(gone, timeout=5)  # waits for the TTL
    assert list(await backend.read("s1", 0, 10)) == []
    with pytest.raises(StreamNotFoundError):
        await backend.append("s1", payload(3))
    fresh = await backend.create("s1")
    assert (fresh.state, fresh.last_seq) == (StreamState.RUNNING, 0)


async def test_subscribe_to_unknown_stream_fails(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    with pytest.raises(StreamNotFoundError):
        await backend.subscribe("unknown")


async def test_subscriptions_receive_later_appends_in_order(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    meta = await backend.create("s1")
    await backend.append("s1", payload(1))  # before subscribing: not delivered
    one = await backend.subscribe("s1")
    two = await backend.subscribe("s1")
    for n in range(2, 22):
        await backend.append("s1", payload(n))
    expected = [notice(meta, n) for n in range(2, 22)]
    assert [await get(one) for _ in expected] == expected
    assert [await get(two) for _ in expected] == expected
    one.close()
    one.close()  # idempotent
    await backend.append("s1", payload(22))
    assert await get(two) == notice(meta, 22)  # delivery happened ...
    assert await nothing_queued(one)  # ... but not to the closed subscription
    two.close()


async def test_slow_subscriber_is_cut_off_alone(make_backend: MakeBackend) -> None:
    backend = await make_backend(ChannelConfig(subscriber_queue_size=5))
    meta = await backend.create("s1")
    slow = await backend.subscribe("s1")
    reader = await backend.subscribe("s1")

    async def publish() -> None:
        for n in range(1, 101):
            assert await backend.append("s1", payload(n)) == n
            assert await get(reader) == notice(meta, n)

    await asyncio.wait_for(publish(), 20)
    for _ in range(2):  # every later get fails alike
        with pytest.raises(SlowConsumerError):
            await get(slow)
    await backend.append("s1", payload(101))
    assert await get(reader) == notice(meta, 101)
    reader.close()
    slow.close()


async def test_publisher_never_waits_for_subscribers(make_backend: MakeBackend) -> None:
    backend = await make_backend(ChannelConfig(subscriber_queue_size=5))
    await backend.create("s1")
    idle = [await backend.subscribe("s1") for _ in range(3)]

    async def publish() -> list[int]:
        return [await backend.append("s1", payload(n)) for n in range(1, 101)]

    assert await asyncio.wait_for(publish(), 20) == list(range(1, 101))
    for subscription in idle:
        with pytest.raises(SlowConsumerError):
            await get(subscription)
        subscription.close()


# ---- Redis specifics ---------------------------------------------------------------------


@pytest.fixture
async def redis_backend(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> AsyncIterator[RedisChannelBackend]:
    """A started Redis backend (1 h TTL) on its own retrying client; empty database."""
    client = make_client(QueueRedisConfig(redis_url))
    backend = RedisChannelBackend(client, ChannelConfig(key_prefix="app:"))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()
        await client.aclose()


@pytest.mark.redis
async def test_redis_key_layout(
    redis_backend: RedisChannelBackend, redis_client: redis.asyncio.Redis
) -> None:
    meta = await redis_backend.create("job-1", owner="alice")
    for n in range(1, 4):
        await redis_backend.append("job-1", payload(n))
    assert sorted(await redis_client.keys("*")) == [b"app:{job-1}:events", b"app:{job-1}:meta"]
    assert key_slot(b"app:{job-1}:events") == key_slot(b"app:{job-1}:meta")
    entries = await redis_client.xrange("app:{job-1}:events")
    assert entries == [(f"{n}-0".encode(), {b"e": payload(n)}) for n in range(1, 4)]
    fields = await redis_client.hgetall("app:{job-1}:meta")
    assert fields[b"epoch"] == meta.epoch.encode()
    assert (fields[b"owner"], fields[b"state"], fields[b"seq"]) == (b"alice", b"running", b"3")
    for key in ("app:{job-1}:events", "app:{job-1}:meta"):
        assert 0 < await redis_client.pttl(key) <= 3_600_000


@pytest.mark.redis
async def test_sync_channel_publishes_from_a_thread(
    redis_backend: RedisChannelBackend, redis_url: str
) -> None:
    config = redis_backend.config

    def produce(stage: str) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            channel = SyncRedisChannel(client, config)
            if stage == "create":
                channel.create("job", owner="worker")
                return
            for n in range(1, 10):
                channel.append("job", StreamEvent("log", {"n": n}).to_bytes())
            done = StreamEvent("complete", {"n": 10}).to_bytes()
            channel.append("job", done, final_state=StreamState.DONE)
        finally:
            client.close()

    await asyncio.to_thread(produce, "create")
    meta = await redis_backend.meta("job")
    assert meta is not None
    assert meta.owner == "worker"
    follower = await AsyncStreamChannel(redis_backend, config).follow("job")
    await asyncio.wait_for(asyncio.to_thread(produce, "append"), 10)
    events = await asyncio.wait_for(drain(follower), 10)
    assert [e.data for e in events] == [{"n": n} for n in range(1, 11)]
    assert [e.id for e in events] == [f"{meta.epoch}-{n}" for n in range(1, 11)]


PRODUCER = """
import sys, redis
from streaming_mw.channels.base import StreamState
from streaming_mw.channels.redis import SyncRedisChannel
from streaming_mw.config import ChannelConfig
from streaming_mw.events import StreamEvent
client = redis.Redis.from_url(sys.argv[1])
channel = SyncRedisChannel(client, ChannelConfig(key_prefix="app:"))
print(channel.create("job").epoch, flush=True)
sys.stdin.readline()  # go: the follower is attached
for n in range(1, 6):
    channel.append("job", StreamEvent("log", {"n": n}).to_bytes())
channel.append("job", StreamEvent("error", {"n": 6}).to_bytes(), final_state=StreamState.ERROR)
client.close()
"""


@pytest.mark.redis
async def test_sync_channel_publishes_from_another_process(
    redis_backend: RedisChannelBackend, redis_url: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRODUCER, redis_url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        epoch = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        follower = await AsyncStreamChannel(redis_backend, redis_backend.config).follow("job")
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        events = await asyncio.wait_for(drain(follower), 20)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert [e.data for e in events] == [{"n": n} for n in range(1, 7)]
    assert [e.id for e in events] == [f"{epoch}-{n}" for n in range(1, 7)]
    meta = await redis_backend.meta("job")
    assert meta is not None
    assert meta.state is StreamState.ERROR


async def drain(follower: Follower) -> list[StreamEvent]:
    """Every event until the terminal one; then the follower is closed."""
    events: list[StreamEvent] = []
    while not follower.finished:
        event = await follower.next(10)
        assert event is not None, "no event within 10 s"
        events.append(event)
    follower.aclose()
    return events


async def test_memory_history_keeps_right_sized_payloads() -> None:
    """orjson's bytes keep a ~4 KB working buffer; retained history must not (it lives for
    hours, 10,000 events per stream). A regression bound with a wide margin, not a benchmark."""
    backend = MemoryChannelBackend(ChannelConfig())
    await backend.create("sized")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            await backend.append("sized", StreamEvent("progress", {"i": i}).to_bytes())
        retained = tracemalloc.get_traced_memory()[0] - before  # only history holds them
    finally:
        tracemalloc.stop()
    assert retained < 1000 * 1024, f"{retained / 1000:.0f} bytes per retained event"


# --- idempotent appends (a retried append never stores an event twice) ---------------------


async def test_a_repeated_producer_mark_is_applied_once(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    meta = await backend.create("retried")
    subscription = await backend.subscribe("retried")
    mark = ProducerMark("p1", 1)
    first = await backend.append("retried", payload(1), producer=mark)
    again = await backend.append("retried", payload(1), producer=mark)  # the retry
    assert first == again == 1
    assert await backend.append("retried", payload(2), producer=ProducerMark("p1", 2)) == 2
    assert await backend.read("retried", 0, 10) == [(1, payload(1)), (2, payload(2))]
    assert await get(subscription) == notice(meta, 1)
    assert await get(subscription) == notice(meta, 2)
    assert await nothing_queued(subscription)


async def test_producers_are_numbered_independently(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.create("two")
    assert await backend.append("two", payload(1), producer=ProducerMark("a", 1)) == 1
    assert await backend.append("two", payload(2), producer=ProducerMark("b", 1)) == 2
    assert await backend.append("two", payload(3)) == 3  # no mark: always applied
    assert await backend.append("two", payload(3)) == 4
    assert await backend.append("two", payload(2), producer=ProducerMark("b", 1)) == 2


async def test_a_repeated_terminal_append_returns_its_seq(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.create("ended")
    mark = ProducerMark("p", 1)
    seq = await backend.append("ended", payload(1), final_state=StreamState.DONE, producer=mark)
    # the retry of the event that ended the stream is not "stream closed": it was applied
    assert await backend.append("ended", payload(1), final_state=StreamState.DONE, producer=mark)
    assert seq == 1
    with pytest.raises(StreamClosedError):
        await backend.append("ended", payload(2), producer=ProducerMark("p", 2))


async def test_a_producer_going_backwards_is_refused(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    await backend.create("order")
    await backend.append("order", payload(1), producer=ProducerMark("p", 2))
    with pytest.raises(ConfigurationError, match="out of order"):
        await backend.append("order", payload(0), producer=ProducerMark("p", 1))
    assert await backend.read("order", 0, 10) == [(1, payload(1))]
