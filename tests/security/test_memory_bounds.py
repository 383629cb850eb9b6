"""Memory an attacker could pin is bounded in bytes: the per-process cache of decoded events, and
the queue of a follower that never reads."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
from streaming_mw.config import ChannelConfig
from streaming_mw.errors import SlowConsumerError
from streaming_mw.events import StreamEvent

MIB = 1024 * 1024
BIG = "x" * (200 * 1024)  # 200 KB of data per event


async def test_1200_events_of_200_kb_leave_the_cache_within_its_budget() -> None:
    config = ChannelConfig(history_size=10, max_event_bytes=256 * 1024)
    channel = AsyncStreamChannel(MemoryChannelBackend(config), config)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await channel.create("big")
        follower = await channel.follow("big")
        for n in range(1200):
            await channel.publish("big", StreamEvent("log", {"message": BIG, "n": n}))
            event = await follower.next(1)
            assert event is not None
            follower.frame(event)  # what a response does: the shared frame is built too
        follower.aclose()
        del follower, event
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert channel.shared.nbytes <= config.shared_cache_bytes
    # the cache budget (32 MiB) plus 10 events of history, not 1,024 cached events (~400 MiB)
    assert held < config.shared_cache_bytes + 16 * MIB, f"{held / MIB:.0f} MiB held"


async def test_a_follower_that_never_reads_is_cut_at_its_byte_budget() -> None:
    config = ChannelConfig(subscriber_queue_bytes=4 * MIB, max_event_bytes=256 * 1024)
    backend = MemoryChannelBackend(config)
    channel = AsyncStreamChannel(backend, config)
    await channel.create("flood")
    subscription = await backend.subscribe("flood")
    for n in range(100):  # 20 MB in all, far below the 1,024-event count limit
        await channel.publish("flood", StreamEvent("log", {"message": BIG, "n": n}))
    with pytest.raises(SlowConsumerError):
        await subscription.get(0)
    # cut off and emptied: it pins nothing, and the stream's other readers are unaffected
    assert subscription._bytes == 0
    assert len(subscription._items) == 0
