"""Redis killed (SIGKILL) and started again under 50 live streams of both patterns.

``tests.apps.chaos`` runs in a uvicorn child process on Redis: 25 direct streams under
`stream_lease` and 25 queue-based streams whose in-process workers publish, every stream
flowing when Redis dies. Redis comes back on the same port empty (the session server) or with
its append-only file (a server of the test's own). Then:

- every direct client got its whole answer, or a terminal ``error`` event (never a silent cut);
- every followed client (reconnecting with ``Last-Event-ID`` after a ``retry:`` end, as a
  browser does) got every event exactly once in order, or an explicit ``reset`` then the rest;
- no lease is left (the limiter, the process's registry, the Redis sorted sets), the process's
  asyncio tasks are back to their baseline, and its RSS grew by less than 64 MiB.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from tests.helpers.chaos import (
    Seen,
    chaos_server,
    check_followed,
    flowing,
    followed,
    lease_keys,
    lease_lost,
    read_until_end,
    settled,
)
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

STREAMS = 25  # of each pattern
TOKENS = 100
EVERY = 0.05
RSS_BOUND_KB = 64 * 1024


async def direct(base_url: str, user: str, seen: Seen) -> None:
    path = f"/direct?user={user}&n={TOKENS}&every={EVERY}"
    async with SSEClient.connect(base_url, path, timeout=10) as client:
        assert client.status == 200, client.status
        await read_until_end(client, seen, timeout=30)


def check_direct(seen: Seen) -> str | None:
    """The whole answer (tokens 1..N in order, then ``done``) or a terminal ``error``."""
    if seen.ended != "terminal":
        return f"cut without a terminal event ({seen.ended}, {len(seen.events)} events)"
    last = seen.events[-1]
    tokens = [json.loads(e.data)["n"] for e in seen.events if e.event == "token"]
    if last.event == "error":
        return None if tokens == list(range(1, len(tokens) + 1)) else "tokens out of order"
    return None if tokens == list(range(1, TOKENS + 1)) else f"{len(tokens)} tokens"


@pytest.mark.parametrize("persistence", ["empty", "aof"])
async def test_redis_killed_and_restarted_under_50_streams_of_both_patterns(
    persistence: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    started = time.monotonic()
    server_fixture = "redis_server" if persistence == "empty" else "own_redis"
    redis_server: RedisServer = request.getfixturevalue(server_fixture)
    client = redis.asyncio.from_url(redis_server.url)
    await client.flushall()
    server = chaos_server(tmp_path, redis_server.url)
    await asyncio.to_thread(server.start)
    users = [f"d{i}" for i in range(STREAMS)] + [f"f{i}" for i in range(STREAMS)]
    try:
        warm = Seen(), Seen()  # start the fan-out reader, the keeper, the watchdog once
        await asyncio.gather(
            direct(server.base_url, "w0", warm[0]), followed(server.base_url, "w1", warm[1])
        )
        base = await settled(server.base_url, users, tasks=10**6)
        seen = {user: Seen() for user in users}
        tasks = [
            asyncio.create_task(
                direct(server.base_url, user, seen[user])
                if user.startswith("d")
                else followed(server.base_url, user, seen[user], steps=TOKENS, delay=EVERY)
            )
            for user in users
        ]
        await flowing(seen.values(), tasks, 10)
        killed = time.monotonic()
        redis_server.kill()
        await asyncio.to_thread(redis_server.start)
        down = time.monotonic() - killed
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        after = await settled(server.base_url, users, base["tasks"])
        left_in_redis = await lease_keys(client)
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)

    problems = {
        user: problem
        for user, s in seen.items()
        if (problem := check_direct(s) if user.startswith("d") else check_followed(s, TOKENS))
    }
    resets = sum(1 for s in seen.values() for e in s.events if e.event == "reset")
    errors = sum(1 for s in seen.values() if s.events and s.events[-1].event == "error")
    lost = sum(1 for s in seen.values() for e in s.events if lease_lost(e))
    reconnects = sum(s.connections - 1 for s in seen.values())
    grew = after["rss_kb"] - base["rss_kb"]
    print(
        f"\nRedis SIGKILL ({persistence}) under {2 * STREAMS} streams: down {down:.2f} s; "
        f"{errors} direct streams ended by an error event, {lost} follows ended by "
        f"lease_lost then resumed, {resets} resets, {reconnects} reconnects; "
        f"after: leases {after['leases']} (Redis {left_in_redis}), open streams "
        f"{after['open_streams']}, tasks {after['tasks']} (baseline {base['tasks']}), "
        f"RSS {base['rss_kb'] // 1024}->{after['rss_kb'] // 1024} MiB; "
        f"{server.log_text().count('Traceback')} tracebacks in the server log; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert not problems, problems
    # a follow ended by its lost lease is reported as "limit", like a direct stream's
    assert "ended (shutdown)" not in server.log_text()
    assert after["leases"] == 0, after["held"]
    assert after["registry_leases"] == {}
    assert after["open_streams"] == 0
    assert left_in_redis == 0
    assert after["tasks"] <= base["tasks"], (after["tasks"], base["tasks"])
    assert grew < RSS_BOUND_KB, f"RSS grew by {grew} KiB"
