"""The `ProducingBackend` contract, against every channel backend (memory, Redis, Redis
Cluster): batched idempotent appends, the producer heartbeat, the cancel flag and the count of
live followers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from streaming_mw.channels import StreamState
from streaming_mw.channels.base import Notice, ProducerMark
from streaming_mw.channels.producing import Batch, ProducingBackend
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.errors import StreamClosedError, StreamExistsError, StreamNotFoundError
from streaming_mw.events import new_epoch

if TYPE_CHECKING:
    from tests.helpers.channels import MakeBackend


async def producing(make_backend: MakeBackend) -> ProducingBackend:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    return backend


async def test_append_batch_numbers_in_order_and_notifies(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    await backend.create("s1", owner="u")
    subscription = await backend.subscribe("s1")
    mark = ProducerMark("p", 1)
    assert await backend.append_batch("s1", [b"a", b"b", b"c"], producer=mark) == 1
    assert await backend.append_batch("s1", [b"d"], producer=ProducerMark("p", 2)) == 4
    assert list(await backend.read("s1", 0, 10)) == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
    received = []
    for _ in range(4):
        item = await subscription.get(5.0)
        assert isinstance(item, Notice)
        received.append((item.seq, item.payload))
    assert received == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
    subscription.close()


async def test_a_repeated_batch_is_stored_once(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    await backend.create("s2")
    mark = ProducerMark("p", 1)
    assert await backend.append_batch("s2", [b"a", b"b"], producer=mark) == 1
    assert await backend.append_batch("s2", [b"a", b"b"], producer=mark) == 1  # the retry
    assert [seq for seq, _ in await backend.read("s2", 0, 10)] == [1, 2]


async def test_final_state_ends_the_stream(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    await backend.create("s3")
    done = StreamState.DONE
    await backend.append_batch("s3", [b"a", b"z"], final_state=done, producer=ProducerMark("p", 1))
    meta = await backend.meta("s3")
    assert meta is not None
    assert (meta.state, meta.last_seq) == (done, 2)
    with pytest.raises(StreamClosedError):
        await backend.append_batch("s3", [b"x"], producer=ProducerMark("p", 2))
    with pytest.raises(StreamNotFoundError):
        await backend.append_batch("nope", [b"x"], producer=ProducerMark("p", 1))


async def test_heartbeat_cancel_flag_and_followers(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    await backend.create("s0")
    assert await backend.producer_alive("s0") is None  # not a generated stream
    epoch = new_epoch()  # the producer's own: it numbers events before the stream exists
    meta = await backend.create_generated("s4", owner="u", ttl=0.3, epoch=epoch)
    assert (meta.owner, meta.last_seq, meta.state, meta.epoch) == (
        "u",
        0,
        StreamState.RUNNING,
        epoch,
    )
    stored = await backend.meta("s4")
    assert stored is not None
    assert stored.epoch == epoch
    assert await backend.producer_alive("s4") is True
    await backend.create("s5")
    assert await backend.beat(["s4", "s5"], ttl=0.3) == set()
    await backend.request_cancel("s4")
    assert await backend.beat(["s4", "s5"], ttl=None) == {"s4"}
    assert await backend.beat(["s5", "s4"], ttl=0.3) == {"s4"}
    assert await backend.followers("s4") == 0
    subscription = await backend.subscribe("s4")
    assert await backend.followers("s4") == 1
    subscription.close()
    await asyncio.sleep(0.5)  # the heartbeat was not refreshed
    assert await backend.producer_alive("s4") is False
    await backend.stop_producing("s4")
    assert await backend.beat(["s4"], ttl=None) == set()


async def test_the_final_batch_ends_the_producing(make_backend: MakeBackend) -> None:
    backend = await producing(make_backend)
    await backend.create_generated("s6", owner="u", ttl=30.0)
    await backend.request_cancel("s6")
    assert await backend.producer_alive("s6") is True
    assert await backend.beat(["s6"], ttl=None) == {"s6"}
    mark = ProducerMark("p", 1)
    await backend.append_batch("s6", [b"a"], producer=mark)
    assert await backend.producer_alive("s6") is True  # not the last batch: still producing
    done = StreamState.DONE
    await backend.append_batch("s6", [b"z"], final_state=done, producer=ProducerMark("p", 2))
    # the heartbeat and the cancel request went with the final state, as `stop_producing` does
    assert await backend.producer_alive("s6") is False
    assert await backend.beat(["s6"], ttl=None) == set()


async def test_create_generated_never_takes_over_an_existing_stream(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    await backend.create("taken", owner="alice")
    await backend.append("taken", b"a")
    mine = await backend.create_generated("mine", owner="bob", ttl=5.0)
    await backend.append_batch(
        "mine", [b"x"], final_state=StreamState.DONE, producer=ProducerMark("p", 1)
    )
    for stream_id in ("taken", "mine"):  # running or ended, another owner or the same
        for owner in ("alice", "bob"):
            with pytest.raises(StreamExistsError):
                await backend.create_generated(stream_id, owner=owner, ttl=5.0)
    taken = await backend.meta("taken")
    assert taken is not None
    assert (taken.owner, taken.last_seq, taken.state) == ("alice", 1, StreamState.RUNNING)
    assert await backend.producer_alive("taken") is None  # not marked as generated
    assert list(await backend.read("mine", 0, 10)) == [(1, b"x")]
    stored = await backend.meta("mine")
    assert stored is not None
    assert (stored.epoch, stored.owner) == (mine.epoch, "bob")


async def test_append_batches_sends_several_streams_at_once(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    assert isinstance(backend, ProducingBackend)
    for stream_id in ("m1", "m2", "m3"):
        await backend.create(stream_id)
    await backend.append_batch(
        "m3", [b"z"], final_state=StreamState.DONE, producer=ProducerMark("q", 1)
    )
    batches = [
        Batch("m1", [b"a", b"b"], None, ProducerMark("p1", 1)),
        Batch("m2", [b"c"], StreamState.DONE, ProducerMark("p2", 1)),
        Batch("m3", [b"x"], None, ProducerMark("q", 2)),  # that stream already ended
        Batch("nope", [b"x"], None, ProducerMark("p4", 1)),
    ]
    answers = await backend.append_batches(batches)
    assert answers[:2] == [1, 1]
    assert isinstance(answers[2], StreamClosedError)
    assert isinstance(answers[3], StreamNotFoundError)
    again = await backend.append_batches(batches[:2])  # a retried round trip: stored once
    assert again == [1, 1]
    assert list(await backend.read("m1", 0, 10)) == [(1, b"a"), (2, b"b")]
    assert list(await backend.read("m2", 0, 10)) == [(1, b"c")]
    meta = await backend.meta("m2")
    assert meta is not None
    assert meta.state is StreamState.DONE


async def test_append_batches_loads_the_script_again_after_a_flush(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend()
    if not isinstance(backend, RedisChannelBackend) or backend._sharded:
        pytest.skip("a single Redis server's script cache")
    await backend.create("f1")
    await backend.create("f2")
    await backend.append_batch("f1", [b"a"], producer=ProducerMark("p", 1))  # script loaded
    await backend._client.script_flush()  # as after a restart of the server
    batches = [
        Batch("f1", [b"b"], None, ProducerMark("p", 2)),
        Batch("f2", [b"c"], None, ProducerMark("r", 1)),
    ]
    assert await backend.append_batches(batches) == [2, 1]
    assert [seq for seq, _ in await backend.read("f1", 0, 10)] == [1, 2]
