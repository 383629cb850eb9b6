"""The shutdown drain under gunicorn with uvicorn workers, real sockets: SIGTERM to the
arbiter, and a worker recycled by ``--max-requests`` while streams are open. The recycle sends
no signal: the uvicorn worker hands the limit to uvicorn, which stops listening and then waits
for every connection to close; the middleware sees the listening socket close and drains."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.helpers.sse_client import SSEClient
from tests.test_drain import (
    CLEAN_EXIT,
    DRAIN_TIMEOUT,
    _check_direct,
    _check_followed,
    _seqs,
    _streams,
)

if TYPE_CHECKING:
    import redis.asyncio

    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(90)]

MAX_REQUESTS = 11
"""uvicorn counts completed responses: the 10 short direct streams, then the one request that
reaches the limit."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _wait_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} still running after {timeout}s"
        await asyncio.sleep(0.05)


async def _worker(server: UvicornProcess, old: int | None = None) -> int:
    """The pid of the (single) worker, once it is another one than ``old``."""
    deadline = time.monotonic() + 20
    while True:
        workers = [pid for pid in server.children() if pid != old]
        if workers:
            return workers[0]
        assert time.monotonic() < deadline, server.log_text()
        await asyncio.sleep(0.05)


async def _serving(base_url: str) -> None:
    """The new worker answers (gunicorn keeps the listening socket: connecting is not enough)."""
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError, TimeoutError):
            async with SSEClient.connect(base_url, "/ready", timeout=2) as ready:
                if ready.status == 200:
                    return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["--max-requests", "SIGTERM"])
async def test_gunicorn_drains_a_recycled_or_stopped_worker(
    uvicorn_process: StartUvicornProcess,
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    how: str,
) -> None:
    started = time.monotonic()
    client = redis_client  # flushed, and closed after the test whatever happens
    env = {"REDIS_URL": redis_url, "STREAMING_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    args = ("--max-requests", str(MAX_REQUESTS)) if how == "--max-requests" else ()
    server = uvicorn_process("tests.apps.drain:app", env, server="gunicorn", args=args)
    worker = await _worker(server)
    async with _streams(server.base_url) as (stream_id, followed, short, long):
        assert await client.keys("stream_leases:{*")
        tasks = {id(r): asyncio.create_task(r.run()) for r in followed + short + long}
        await asyncio.wait_for(asyncio.gather(*(tasks[id(r)] for r in short)), 10)
        if how == "SIGTERM":
            stopped = time.monotonic()
            server.process_signal(signal.SIGTERM)
        else:  # the 11th completed response: the worker stops listening, nothing else
            async with SSEClient.connect(server.base_url, "/ready") as last:
                assert last.status == 200
            stopped = time.monotonic()  # uvicorn counted the response before it reached us
        await _wait_exit(worker, DRAIN_TIMEOUT + 10)
        elapsed = time.monotonic() - stopped
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 5)
    print(f"gunicorn {how}: worker exit in {elapsed:.2f}s with {len(tasks)} open streams")
    assert elapsed <= DRAIN_TIMEOUT + 2, f"{elapsed:.2f}s\n{server.log_text()}"
    _check_followed(followed)
    _check_direct(short, long)
    assert await client.keys("stream_leases:{*") == [], "a lease was left behind"
    if how == "SIGTERM":
        assert await asyncio.to_thread(server.wait, 10) in CLEAN_EXIT
        server = uvicorn_process("tests.apps.drain:app", {"REDIS_URL": redis_url})
    else:  # the arbiter started another worker: the followers resume there
        assert server.is_running()
        await _worker(server, old=worker)
        await _serving(server.base_url)
    reader = followed[0]
    headers = {"last-event-id": reader.client.last_event_id}
    async with SSEClient.connect(
        server.base_url, f"/streams/{stream_id}", headers=headers
    ) as again:
        rest = [event async for event in again.events()]
    seqs = _seqs(reader.events) + _seqs(rest)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or duplicate on resume"
    assert rest[-1].event == "error"
    assert json.loads(rest[-1].data)["reason"] == "shutdown"
    print(f"took {time.monotonic() - started:.1f}s")
