"""The chaos suite's server (``tests.apps.chaos`` in a uvicorn child process) and its figures."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.helpers.sse_client import IncompleteBody, SSEClient
from tests.helpers.uvicorn_server import UvicornProcess

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    import redis.asyncio

    from streaming_mw.sse import SSEEvent

APP = "tests.apps.chaos:app"


def chaos_server(
    log_dir: Path, redis_url: str | None = None, **env: str | int | float
) -> UvicornProcess:
    """``tests.apps.chaos`` in a uvicorn process (memory mode without ``redis_url``)."""
    variables = {"REDIS_URL": redis_url or "", "STREAMING_MODE": "redis" if redis_url else "memory"}
    variables |= {name: str(value) for name, value in env.items()}
    mode = "redis" if redis_url else "memory"
    return UvicornProcess(
        APP,
        variables,
        log_path=log_dir / f"chaos-{mode}-{time.monotonic_ns()}.log",
        args=("--no-access-log", "--log-level", "info"),
    )


async def status(base_url: str, users: Iterable[str] = ()) -> dict[str, Any]:
    """The server's ``/status`` figures (tasks, RSS, open streams, leases of ``users``)."""
    path = "/status?users=" + ",".join(users)
    async with SSEClient.connect(base_url, path, timeout=10) as client:
        assert client.status == 200, client.status
        result: dict[str, Any] = await client.read_json(10)
        return result


async def settled(
    base_url: str, users: Iterable[str], tasks: int, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll ``/status`` until no stream is open, no lease held and the tasks are back to
    ``tasks`` (the baseline); returns the last figures (the caller asserts on them)."""
    names = list(users)
    deadline = time.monotonic() + timeout
    while True:
        figures = await status(base_url, names)
        quiet = figures["open_streams"] == 0 and figures["leases"] == 0
        if (quiet and figures["tasks"] <= tasks) or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.2)


async def lease_keys(client: redis.asyncio.Redis, namespace: str = "stream_leases") -> int:
    """Lease entries left in Redis, over every user's sorted set."""
    total = 0
    async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        if await client.type(key) == b"zset":
            total += await client.zcard(key)
    return total


async def leftovers(client: redis.asyncio.Redis) -> tuple[int, list[str], list[str]]:
    """(history keys of streams, other keys that expire on their own, keys that never expire)
    — the process's lease configuration record aside."""
    streams, expiring, stay = 0, list[str](), list[str]()
    async for raw in client.scan_iter(count=1000):
        key, ttl = raw.decode(), await client.ttl(raw)
        if key == "stream_leases:config":
            continue
        if key.startswith("stream:{") and ttl > 0:
            streams += 1
        else:
            kind = await client.type(raw)
            (expiring if ttl > 0 else stay).append(f"{key} ({kind!r})")
    return streams, expiring, stay


@dataclass
class Seen:
    """What one client read of a stream, over every connection it needed."""

    events: list[SSEEvent] = field(default_factory=list)
    connections: int = 0
    ended: str = ""  # how the last connection ended: "terminal", "eof", "broken"
    retries: int = 0
    longest_gap: float = 0.0  # seconds between two events, the longest
    _last: float = 0.0


async def read_until_end(client: SSEClient, seen: Seen, timeout: float) -> None:
    """Read ``client`` until a terminal event (``complete``/``error``/``done``) or the end."""
    seen.connections += 1
    try:
        async for event in client.events(timeout):
            now = time.monotonic()
            if seen._last:
                seen.longest_gap = max(seen.longest_gap, now - seen._last)
            seen._last = now
            seen.events.append(event)
            if event.event in {"complete", "error", "done"}:
                seen.ended = "terminal"
                return
    except IncompleteBody:
        seen.ended = "broken"
        return
    if client.retry is not None:
        seen.retries += 1
    seen.ended = "eof"


def lease_lost(event: SSEEvent) -> bool:
    """``error {reason: "lease_lost"}``: the follow's lease was lost (Redis restarted empty),
    not the stream's end: the client may follow again from its cursor."""
    return event.event == "error" and json.loads(event.data).get("reason") == "lease_lost"


def finished(seen: Seen) -> bool:
    """The stream's own terminal event arrived (a lost lease's ``error`` is not one)."""
    return seen.ended == "terminal" and not lease_lost(seen.events[-1])


async def followed(
    base_url: str,
    user: str,
    seen: Seen,
    *,
    steps: int = 10,
    delay: float = 0.02,
    bound: float = 60,
    ids: dict[str, str] | None = None,
) -> None:
    """``POST /deploy`` as ``user`` and read the stream; after an end without a terminal event
    (a ``retry:`` hint) or a lost lease, resume from the last id, as a browser does, until the
    stream's terminal event. ``ids`` receives the stream id under ``user``."""
    config = {"steps": steps, "delay": delay}
    headers = {"x-user": user}
    deadline = time.monotonic() + bound
    async with SSEClient.connect(
        base_url, "/deploy", method="POST", json=config, headers=headers, timeout=10
    ) as client:
        assert client.status == 200, client.status
        stream_id = client.headers["x-stream-id"]
        if ids is not None:
            ids[user] = stream_id
        await read_until_end(client, seen, timeout=30)
        cursor = client.last_event_id
    while not finished(seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        resume = {**headers, "last-event-id": cursor} if cursor else headers
        async with SSEClient.connect(
            base_url, f"/streams/{stream_id}", headers=resume, timeout=10
        ) as client:
            if client.status != 200:
                seen.ended = f"status {client.status}"
                continue
            await read_until_end(client, seen, timeout=30)
            cursor = client.last_event_id or cursor


async def flowing(
    seen: Iterable[Seen], tasks: list[asyncio.Task[None]], events: int, timeout: float = 30
) -> None:
    """Wait until every client has read ``events`` events (a client that failed raises)."""
    clients = list(seen)
    async with asyncio.timeout(timeout):
        while min(len(s.events) for s in clients) < events:
            done, _ = await asyncio.wait(tasks, timeout=0.05, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()


def messages(events: Iterable[SSEEvent]) -> list[str]:
    """The ``message`` of each ``log`` event."""
    return [json.loads(e.data)["message"] for e in events if e.event == "log"]


def check_followed(seen: Seen, steps: int) -> str | None:
    """Every event exactly once in order (``1..steps``, then ``complete``), or cut by an
    explicit ``reset``: what follows a reset is the stream as it now is, in order. None if
    fine, else what is wrong."""
    if seen.ended != "terminal" or seen.events[-1].event != "complete":
        return f"no terminal event (ended {seen.ended!r})"
    segments: list[list[SSEEvent]] = [[]]
    for event in seen.events:
        if lease_lost(event):
            continue  # an explicit end of that follow; the next one resumes from its cursor
        if event.event == "reset":
            segments.append([])
        else:
            segments[-1].append(event)
    expected = [str(n) for n in range(1, steps + 1)]
    for index, segment in enumerate(segments):
        got = messages(segment)
        if index == 0 and got != expected[: len(got)]:
            return f"before any reset: not 1..{len(got)} in order"
        if got and got != [str(n) for n in range(int(got[0]), int(got[0]) + len(got))]:
            return f"after reset {index}: a gap or a repeat"
        seqs = [int(e.id.rpartition("-")[2]) for e in segment if e.id]
        if seqs != sorted(set(seqs)):
            return f"segment {index}: ids repeat or go back"
    if len(segments) == 1 and messages(seen.events) != expected:
        return f"no reset, yet {len(messages(seen.events))} of {steps} events"
    return None
