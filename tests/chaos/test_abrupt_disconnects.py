"""1,000 clients that drop their connection mid-stream: half with an RST, half with a FIN.

``tests.apps.chaos`` in a uvicorn child process, in memory mode and on Redis. 500 direct
streams (under `stream_lease`, endless) and 500 queue-based streams (`sse_response` with an
in-process worker, holding a lease through `lease_dependency`), 50 at a time; each client
reads its first event, then drops: ``SO_LINGER`` 0 and close (RST) or ``shutdown(SHUT_WR)``
and close (FIN). Afterwards no lease is held (the limiter, the registry, the Redis sorted
sets), no stream is open, the process's asyncio tasks are back to their baseline, its RSS grew
by less than 64 MiB, Redis holds nothing but the streams' histories (each with its expiry),
and the server logged no traceback.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from tests.helpers.chaos import chaos_server, lease_keys, leftovers, settled
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = 1000
AT_ONCE = 50
RSS_BOUND_KB = 64 * 1024


async def drop_after_first_event(base_url: str, index: int) -> None:
    user = f"u{index}"
    if index % 2:
        connect = SSEClient.connect(
            base_url, f"/direct?user={user}&n=100000&every=0.01", timeout=30
        )
    else:
        config = {"steps": 20, "delay": 0.01}
        connect = SSEClient.connect(
            base_url, "/deploy", method="POST", json=config, headers={"x-user": user}, timeout=30
        )
    async with connect as client:
        assert client.status == 200, client.status
        await client.next_event(20)
        if index % 4 < 2:
            client.reset()  # RST
        else:
            client.half_close()  # FIN


@pytest.mark.parametrize("mode", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_1000_abrupt_disconnects_leave_nothing_behind(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    started = time.monotonic()
    url = None
    client = None
    if mode == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        url = redis_server.url
        client = redis.asyncio.from_url(url)
        await client.flushall()
    server = chaos_server(tmp_path, url)
    await asyncio.to_thread(server.start)
    users = [f"u{i}" for i in range(CLIENTS)]
    try:
        await asyncio.gather(*(drop_after_first_event(server.base_url, i) for i in (-1, -2)))
        base = await settled(server.base_url, ["u-1", "u-2"], tasks=10**6)
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(index: int) -> None:
            async with gate:
                await drop_after_first_event(server.base_url, index)

        await asyncio.gather(*(one(i) for i in range(CLIENTS)))
        dropped = time.monotonic()
        after = await settled(server.base_url, users, base["tasks"])
        quiet = time.monotonic() - dropped
        left = await lease_keys(client) if client is not None else 0
        streams, expiring, stay = await leftovers(client) if client else (0, [], [])
    finally:
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(server.stop)
    log = server.log_text()
    grew = after["rss_kb"] - base["rss_kb"]
    print(
        f"\n{CLIENTS} abrupt disconnects ({mode}, half RST, half direct): all dropped after "
        f"{dropped - started:.1f} s; no lease and no open stream {quiet:.1f} s after the last; "
        f"leases {after['leases']} (Redis {left}), tasks {after['tasks']} (baseline "
        f"{base['tasks']}), RSS {base['rss_kb'] // 1024}->{after['rss_kb'] // 1024} MiB, "
        f"Redis: {streams} history keys, {len(expiring)} other expiring "
        f"{expiring[:2]}, {len(stay)} never expiring; "
        f"{log.count('ended (client_disconnect)')} releases logged as client_disconnect, "
        f"{log.count('STREAMING FALLBACK')} lease fallbacks; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert after["leases"] == 0, after["held"]
    assert after["registry_leases"] == {}
    assert after["open_streams"] == 0
    assert after["tasks"] <= base["tasks"], (after["tasks"], base["tasks"])
    assert grew < RSS_BOUND_KB, f"RSS grew by {grew} KiB"
    assert left == 0
    assert stay == [], stay[:10]
    assert "Traceback" not in log, log[-3000:]
