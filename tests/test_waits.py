"""Followers' timed waits share one loop timer (`SharedDeadlines`): none ends early, waits two
buckets (20 ms) apart end in the order of their deadlines, and a deadline that moved does not
end the wait at its old time. How late a wait ends is measured nowhere here: that is the
machine's load (the design bound is one 10 ms bucket)."""

from __future__ import annotations

import asyncio
import time

from streaming_mw.channels.base import Notice, QueueSubscription
from streaming_mw.channels.waits import SharedDeadlines


def subscription(deadlines: SharedDeadlines) -> QueueSubscription:
    return QueueSubscription(16, lambda _: None, deadlines=deadlines)


async def timed_get(
    sub: QueueSubscription, wait: float, ended: list[float] | None = None
) -> tuple[object, float]:
    start = time.monotonic()
    item = await sub.get(wait)
    if ended is not None:
        ended.append(wait)  # the order the waits ended in
    return item, time.monotonic() - start


async def test_many_waits_end_on_time_behind_one_timer() -> None:
    deadlines = SharedDeadlines()
    subs = [subscription(deadlines) for _ in range(200)]
    waits = [0.02 + (i % 10) * 0.01 for i in range(len(subs))]
    loop = asyncio.get_running_loop()
    scheduled_before = len(getattr(loop, "_scheduled", []))
    ended: list[float] = []
    gets = [asyncio.ensure_future(timed_get(s, w, ended)) for s, w in zip(subs, waits, strict=True)]
    await asyncio.sleep(0)
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is not None:  # the stdlib loop lists its timers: one for all 200 waits
        assert len(scheduled) - scheduled_before <= 2
    results = await asyncio.gather(*gets)
    for (item, took), wait in zip(results, waits, strict=True):
        assert item is None
        assert took >= wait - 0.001  # never early (the monotonic clock's own rounding aside)
    last = {wait: max(i for i, w in enumerate(ended) if w == wait) for wait in set(waits)}
    first = {wait: min(i for i, w in enumerate(ended) if w == wait) for wait in set(waits)}
    for wait in set(waits):
        later = [w for w in set(waits) if w >= wait + 0.02 - 1e-9]
        assert all(last[wait] < first[w] for w in later), (wait, ended)
    assert len(deadlines) == 0


async def test_a_moved_deadline_does_not_end_the_wait_at_its_old_time() -> None:
    deadlines = SharedDeadlines()
    sub = subscription(deadlines)
    first = asyncio.ensure_future(sub.get(0.05))
    await asyncio.sleep(0.02)
    sub.deliver(Notice("e", 1, b"{}"))
    assert isinstance(await first, Notice)
    item, took = await timed_get(sub, 0.2)  # the old 0.05 s bucket fires meanwhile
    assert item is None
    assert took >= 0.2 - 0.001


async def test_an_event_ends_the_wait_at_once_and_a_closed_one_is_dropped() -> None:
    deadlines = SharedDeadlines()
    sub, gone = subscription(deadlines), subscription(deadlines)
    waiting = asyncio.ensure_future(sub.get(5.0))
    abandoned = asyncio.ensure_future(gone.get(0.03))
    await asyncio.sleep(0)
    abandoned.cancel()  # its client left: the entry is skipped when its bucket fires
    sub.deliver(Notice("e", 1, b"{}"))
    assert isinstance(await asyncio.wait_for(waiting, 1.0), Notice)
    await asyncio.sleep(0.06)
    assert len(deadlines) == 1  # the 5 s entry of the wait that ended, dropped when it fires


async def test_a_waiter_found_in_a_due_bucket_before_its_deadline_is_kept() -> None:
    # A timer the loop runs a hair early, or a deadline that float rounding put past its
    # bucket: the waiter is not due yet, so it goes back in, and its wait still ends.
    deadlines = SharedDeadlines()
    sub = subscription(deadlines)
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(sub.get(0.05))
    await asyncio.sleep(0)
    deadlines._buckets[0] = {sub}  # long due, holding a waiter that is not
    deadlines._fire(loop)
    assert not waiting.done()
    assert await asyncio.wait_for(waiting, 1.0) is None
