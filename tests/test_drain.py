"""Shutdown drain against real servers and real sockets: SIGTERM (and `start_drain`) ends
followed streams with a ``retry:`` hint after their last whole event, lets direct streams run
until ``drain_timeout`` then ends them with ``error {reason: "shutdown"}``, refuses new
streams, releases every lease, and the process exits within ``drain_timeout`` + 2 s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pytest

from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio

    from streaming_mw.sse import SSEEvent
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

DRAIN_TIMEOUT = 2.0
FOLLOWED = 100
DIRECT = 20
CLEAN_EXIT = (0, -signal.SIGTERM)
"""uvicorn re-raises the signal it shut down for once it is done: death by SIGTERM is clean."""


@dataclass
class Reader:
    """One open stream, read until EOF in the background."""

    client: SSEClient
    events: list[SSEEvent] = field(default_factory=list)
    eof: bool = False
    error: BaseException | None = None

    async def run(self) -> None:
        try:
            async for event in self.client.events(timeout=30):
                self.events.append(event)
            self.eof = True
        except Exception as exc:
            self.error = exc

    @property
    def retry(self) -> int | None:
        return self.client.retry


async def _open(
    stack: contextlib.AsyncExitStack, base_url: str, path: str, method: str = "GET"
) -> SSEClient:
    client = await stack.enter_async_context(SSEClient.connect(base_url, path, method, timeout=10))
    assert client.status == 200, (path, client.status, await client.read_body())
    return client


async def _first_events(readers: list[Reader]) -> None:
    """Every stream is live: it delivered its first event."""
    for reader in readers:
        reader.events.append(await reader.client.next_event(timeout=10))


@contextlib.asynccontextmanager
async def _streams(
    base_url: str,
) -> AsyncIterator[tuple[str, list[Reader], list[Reader], list[Reader]]]:
    """One `sse_response` worker followed by ``FOLLOWED`` clients (its own response and the
    follows), ``DIRECT // 2`` direct streams that finish within the drain timeout and
    ``DIRECT // 2`` that do not."""
    async with contextlib.AsyncExitStack() as stack:
        deploy = await _open(stack, base_url, "/deploy?count=100000&delay=0.02", "POST")
        stream_id = deploy.headers["x-stream-id"]
        followed = [Reader(deploy)]
        for _ in range(FOLLOWED - 1):
            followed.append(Reader(await _open(stack, base_url, f"/streams/{stream_id}")))
        short = [
            Reader(await _open(stack, base_url, f"/direct?user=s{i}&count=8&delay=0.1"))
            for i in range(DIRECT // 2)
        ]
        long = [
            Reader(await _open(stack, base_url, f"/direct?user=l{i}&count=100000&delay=0.1"))
            for i in range(DIRECT // 2)
        ]
        await _first_events(followed + short + long)
        yield stream_id, followed, short, long


def _seqs(events: list[SSEEvent]) -> list[int]:
    return [int(e.id.rsplit("-", 1)[1]) for e in events if e.id]


def _check_followed(followed: list[Reader]) -> None:
    for reader in followed:
        assert reader.error is None, reader.error
        assert reader.eof
        assert reader.retry is not None, "no retry: before EOF"
        seqs = _seqs(reader.events)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or duplicate"
        assert reader.client.last_event_id == reader.events[-1].id
        assert all(e.event == "log" for e in reader.events)


def _check_direct(short: list[Reader], long: list[Reader]) -> None:
    for reader in short:  # finished within the drain timeout: the full answer
        assert reader.error is None, reader.error
        assert [e.event for e in reader.events] == ["token"] * 8 + ["done"]
    for reader in long:  # cut at the deadline: a terminal shutdown error, and retry:
        assert reader.error is None, reader.error
        assert reader.eof
        last = reader.events[-1]
        assert last.event == "error", reader.events[-3:]
        assert json.loads(last.data)["reason"] == "shutdown"
        assert reader.retry is not None


async def _stop_and_read(
    server: UvicornProcess,
    readers: list[Reader],
    limit: float,
    *,
    recycle: bool = False,
    first: tuple[Reader, ...] = (),
) -> float:
    """SIGTERM (or, with ``recycle``, once the streams ``first`` ended, the request that
    reaches ``--limit-max-requests``), then read every stream to its end while the process
    exits."""
    tasks = [asyncio.create_task(r.run()) for r in readers]
    if recycle:  # once the short direct streams completed: the recycle comes right after
        ending = [t for t, r in zip(tasks, readers, strict=True) if any(r is f for f in first)]
        await asyncio.wait_for(asyncio.gather(*ending), 10)
        async with SSEClient.connect(server.base_url, "/ready") as last:
            assert last.status == 200
        started = time.monotonic()  # uvicorn counted that response before it reached us
    else:
        started = time.monotonic()
        server.process_signal(signal.SIGTERM)
    code = await asyncio.to_thread(server.wait, limit + 5)
    elapsed = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    how = "recycled" if recycle else "SIGTERM"
    print(f"{how} -> exit {code} in {elapsed:.2f}s with {len(readers)} open streams")
    assert code in CLEAN_EXIT, server.log_text()
    assert elapsed <= limit, f"exit took {elapsed:.2f}s\n{server.log_text()}"
    return elapsed


SERVERS: dict[str, tuple[Literal["uvicorn", "hypercorn"], int, tuple[str, ...]]] = {
    "uvicorn": ("uvicorn", 1, ()),
    "uvicorn --workers 2": ("uvicorn", 2, ()),
    # No signal reaches the app, and no graceful timeout: uvicorn would wait for ever. The
    # middleware sees the listening socket close and drains. uvicorn counts completed
    # responses: the 10 short direct streams and the request that triggers the recycling.
    "uvicorn --limit-max-requests": ("uvicorn", 1, ("--limit-max-requests", "11")),
    "hypercorn --workers 0": ("hypercorn", 0, ()),
    # No signal reaches Hypercorn's workers either: they close their listening sockets.
    "hypercorn --workers 1": ("hypercorn", 1, ()),
}


@pytest.mark.parametrize("name", list(SERVERS))
async def test_sigterm_drains_every_stream_and_releases_the_leases(
    uvicorn_process: StartUvicornProcess,
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    name: str,
) -> None:
    client = redis_client  # flushed, and closed after the test whatever happens
    env = {"REDIS_URL": redis_url, "STREAMING_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    kind, workers, args = SERVERS[name]
    server = uvicorn_process("tests.apps.drain:app", env, workers=workers, server=kind, args=args)
    async with _streams(server.base_url) as (stream_id, followed, short, long):
        assert await client.keys("stream_leases:{*")  # the direct streams hold leases
        recycle = "--limit-max-requests" in args
        await _stop_and_read(
            server, followed + short + long, DRAIN_TIMEOUT + 2, recycle=recycle, first=(*short,)
        )
    _check_followed(followed)
    _check_direct(short, long)
    assert await client.keys("stream_leases:{*") == [], "a lease was left behind"
    # The cursor each follower holds resumes on another process: no gap, no duplicate, and the
    # worker that was cancelled when its process exited ended the stream visibly.
    resumed = uvicorn_process("tests.apps.drain:app", {"REDIS_URL": redis_url})
    reader = followed[0]
    headers = {"last-event-id": reader.client.last_event_id}
    path = f"/streams/{stream_id}"
    async with SSEClient.connect(resumed.base_url, path, headers=headers) as again:
        rest = [event async for event in again.events()]
    seqs = _seqs(reader.events) + _seqs(rest)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert rest[-1].event == "error"
    assert json.loads(rest[-1].data)["reason"] == "shutdown"


async def test_a_drain_refuses_new_streams_and_readiness_turns_503(
    uvicorn_process: StartUvicornProcess,
) -> None:
    env = {"STREAMING_MODE": "memory", "STREAMING_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    server = uvicorn_process("tests.apps.drain:app", env)
    base = server.base_url
    async with contextlib.AsyncExitStack() as stack:
        deploy = Reader(await _open(stack, base, "/deploy?count=100000&delay=0.02", "POST"))
        stream_id = deploy.client.headers["x-stream-id"]
        direct = Reader(await _open(stack, base, "/direct?user=u&count=100000&delay=0.1"))
        await _first_events([deploy, direct])
        async with SSEClient.connect(base, "/ready") as ready:
            assert (ready.status, await ready.read_json()) == (
                200,
                {"ready": True, "draining": False},
            )
        tasks = [asyncio.create_task(r.run()) for r in (deploy, direct)]
        async with SSEClient.connect(base, "/admin/drain", "POST") as admin:
            assert admin.status == 200
        started = time.monotonic()
        async with SSEClient.connect(base, "/ready") as ready:
            assert ready.status == 503
        follow_json = {"accept": "application/json"}
        async with SSEClient.connect(base, f"/streams/{stream_id}", headers=follow_json) as c:
            assert (c.status, c.headers["retry-after"]) == (503, "1")
        async with SSEClient.connect(base, f"/streams/{stream_id}") as c:  # an EventSource
            assert (c.status, c.headers["content-type"]) == (200, "text/event-stream")
            assert [e async for e in c.events()] == []
            assert c.retry is not None
        for path, method in (("/direct?user=v", "GET"), ("/deploy", "POST")):
            async with SSEClient.connect(base, path, method) as c:
                assert (c.status, c.headers["retry-after"]) == (503, "1"), path
        await asyncio.wait_for(asyncio.gather(*tasks), DRAIN_TIMEOUT + 2)
        cut_after = time.monotonic() - started
    assert deploy.eof
    assert deploy.retry is not None
    assert direct.events[-1].event == "error"
    assert direct.retry is not None
    assert cut_after >= DRAIN_TIMEOUT - 0.5, "the direct stream was cut before its deadline"
    assert server.terminate(timeout=DRAIN_TIMEOUT + 2) in CLEAN_EXIT


@pytest.mark.timeout(90)
async def test_a_sync_worker_that_ignores_the_cancellation_does_not_hold_the_exit(
    uvicorn_process: StartUvicornProcess, redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """Its thread sleeps through the drain (a blocking call): the process still exits within
    ``drain_timeout`` + 2 s (Hypercorn returns from its main: nothing kills the thread for it),
    and the stream ends visibly for whoever resumes it."""
    env = {"REDIS_URL": redis_url, "STREAMING_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    server = uvicorn_process("tests.apps.drain:app", env, workers=0, server="hypercorn")
    async with contextlib.AsyncExitStack() as stack:
        path = "/deploy?count=3&delay=60&sync=true"
        deploy = Reader(await _open(stack, server.base_url, path, "POST"))
        stream_id = deploy.client.headers["x-stream-id"]
        await _first_events([deploy])
        await _stop_and_read(server, [deploy], DRAIN_TIMEOUT + 2)
    _check_followed([deploy])
    resumed = uvicorn_process("tests.apps.drain:app", {"REDIS_URL": redis_url})
    headers = {"last-event-id": deploy.client.last_event_id}
    async with SSEClient.connect(
        resumed.base_url, f"/streams/{stream_id}", headers=headers
    ) as again:
        rest = [event async for event in again.events()]
    assert [e.event for e in rest] == ["error"]
    assert json.loads(rest[-1].data)["reason"] == "shutdown"
    assert "abandoned" in server.log_text()
