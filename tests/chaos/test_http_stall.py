"""Redis stops answering for 6 s (SIGSTOP, then SIGCONT) under 50 followed streams, end to end.

``tests.apps.chaos`` in a uvicorn child process on the session redis-server: 50 queue-based
streams (`sse_response`, in-process workers publishing an event every 50 ms), each read over
HTTP by a client that resumes with ``Last-Event-ID`` whenever its response ends early. The
Redis client's socket timeout is 1 s, so during the stall commands time out and are retried
while Redis still holds the first copies, which it runs when it resumes. Then, for every stream:

- the live client got every event exactly once, in order, ids ``<epoch>-1..N``, no ``reset``;
- a replay from the start (no ``Last-Event-ID``) and one from the middle (``Last-Event-ID``)
  give the same events;
- no lease is held, no stream open, the tasks are back to their baseline, RSS grew < 64 MiB.

The channel-level twin is ``test_redis_stall.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from tests.helpers.chaos import (
    Seen,
    chaos_server,
    flowing,
    followed,
    messages,
    read_until_end,
    settled,
)
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from pathlib import Path

    from streaming_mw.sse import SSEEvent
    from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(150)]

STREAMS = 50
STEPS = 150
DELAY = 0.05
STALL = 6.0


async def replay(base_url: str, stream_id: str, user: str, cursor: str | None) -> list[SSEEvent]:
    headers = {"x-user": user, **({"last-event-id": cursor} if cursor else {})}
    seen = Seen()
    async with SSEClient.connect(base_url, f"/streams/{stream_id}", headers=headers) as client:
        assert client.status == 200, client.status
        await read_until_end(client, seen, timeout=20)
    return seen.events


def exactly_once(events: list[SSEEvent]) -> str | None:
    if messages(events) != [str(n) for n in range(1, STEPS + 1)]:
        return f"{len(messages(events))} log events, not 1..{STEPS} in order"
    epochs = {e.id.rpartition("-")[0] for e in events if e.id}
    seqs = [int(e.id.rpartition("-")[2]) for e in events if e.id]
    if len(epochs) != 1 or seqs != list(range(1, STEPS + 2)):
        return f"ids: {len(epochs)} epochs, seqs not 1..{STEPS + 1}"
    if any(e.event == "reset" for e in events):
        return "a reset"
    return None


async def test_a_6s_redis_stall_under_50_followed_streams_over_http(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    client = redis.asyncio.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    server = chaos_server(tmp_path, redis_server.url, SOCKET_TIMEOUT=1)
    await asyncio.to_thread(server.start)
    users = [f"s{i}" for i in range(STREAMS)]
    stopped = False
    try:
        warm = Seen()
        await followed(server.base_url, "warm", warm)
        base = await settled(server.base_url, users, tasks=10**6)
        seen = {user: Seen() for user in users}
        ids: dict[str, str] = {}

        async def one(user: str) -> None:
            await followed(server.base_url, user, seen[user], steps=STEPS, delay=DELAY, ids=ids)

        tasks = [asyncio.create_task(one(user)) for user in users]
        await flowing(seen.values(), tasks, 5)
        os.kill(redis_server.pid, signal.SIGSTOP)
        stopped = True
        await asyncio.sleep(STALL)
        os.kill(redis_server.pid, signal.SIGCONT)
        stopped = False
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
        problems: dict[str, str] = {}
        for user in users:
            live = seen[user].events
            if (problem := exactly_once(live)) is not None:
                problems[user] = f"live: {problem}"
                continue
            whole = await replay(server.base_url, ids[user], user, None)
            middle = live[STEPS // 2]
            rest = await replay(server.base_url, ids[user], user, middle.id)
            if [(e.id, e.data) for e in whole] != [(e.id, e.data) for e in live]:
                problems[user] = "replay from the start differs"
            elif [(e.id, e.data) for e in rest] != [(e.id, e.data) for e in live[STEPS // 2 + 1 :]]:
                problems[user] = "replay from the middle differs"
        after = await settled(server.base_url, [*users, "warm"], base["tasks"])
    finally:
        if stopped:
            os.kill(redis_server.pid, signal.SIGCONT)
        await asyncio.to_thread(server.stop)
    reconnects = sum(s.connections - 1 for s in seen.values())
    gap = min(s.longest_gap for s in seen.values())
    print(
        f"\n6 s Redis stall under {STREAMS} followed streams over HTTP: {len(problems)} streams "
        f"with a duplicate, a gap or a replay difference; every client waited >= {gap:.1f} s "
        f"for one event; {reconnects} reconnects; leases "
        f"{after['leases']}, open streams {after['open_streams']}, tasks {after['tasks']} "
        f"(baseline {base['tasks']}), RSS {base['rss_kb'] // 1024}->{after['rss_kb'] // 1024} "
        f"MiB; {time.monotonic() - started:.1f} s"
    )
    assert not problems, problems
    assert after["leases"] == 0, after["held"]
    assert after["open_streams"] == 0
    assert after["tasks"] <= base["tasks"], (after["tasks"], base["tasks"])
    assert after["rss_kb"] - base["rss_kb"] < 64 * 1024
