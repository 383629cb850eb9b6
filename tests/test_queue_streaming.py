"""Queue-based streaming end to end: `sse_response` / `stream_response` behind a real uvicorn.

Every scenario runs `tests.apps.deploy` in a uvicorn thread with a private container, once in
memory and once on the session redis-server (``mode="redis"``: no silent fallback). The client
is a raw socket (`SSEClient`), so it can vanish mid-stream like a closed browser tab.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import resource
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, init_streaming
from streaming_mw.runtime import StreamingContainer
from streaming_mw.testing import aread_events, streaming_client
from tests.apps.deploy import build_app, gate
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from streaming_mw.sse import SSEEvent
    from tests.helpers.uvicorn_server import StartUvicornThread

SEED = 20240611
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
Expected = list[tuple[str, dict[str, Any]]]


# --- helpers (also used by test_queue_streaming_redis) -------------------------------------


def start_deploy(
    uvicorn_thread: StartUvicornThread, redis_url: str | None, **channel: Any
) -> tuple[str, StreamingContainer]:
    """`tests.apps.deploy` on a private container: memory without a URL, else Redis only."""
    container = StreamingContainer()
    init_streaming(
        redis_url,
        channel_config=ChannelConfig(**channel),
        mode="memory" if redis_url is None else "redis",
        container=container,
    )
    return uvicorn_thread(build_app(container)).base_url, container


def deploy(
    base_url: str, kind: str, config: dict[str, Any], *, user: str | None = None, **kw: Any
) -> AbstractAsyncContextManager[SSEClient]:
    headers = {**kw.pop("headers", {}), **({"x-user": user} if user else {})}
    return SSEClient.connect(
        base_url, f"/deploy/{kind}", method="POST", json=config, headers=headers, **kw
    )


def follow(
    base_url: str, stream_id: str, cursor: str | None = None, *, query: bool = False, **kw: Any
) -> AbstractAsyncContextManager[SSEClient]:
    path, headers = f"/streams/{stream_id}", dict(kw.pop("headers", {}))
    if cursor is not None and query:
        path += f"?last_event_id={cursor}"
    elif cursor is not None:
        headers["last-event-id"] = cursor
    return SSEClient.connect(base_url, path, headers=headers, **kw)


async def read_all(client: SSEClient, timeout: float = 10.0) -> list[SSEEvent]:
    """Every event until the body ends (``timeout`` per event)."""
    assert client.status == 200, f"answered {client.status}"
    return [event async for event in client.events(timeout)]


def expected_events(config: dict[str, Any]) -> Expected:
    """What `tests.apps.deploy`'s sync and async workers emit for ``config``."""
    steps = int(config.get("steps", 5))
    out: Expected = [("log", {"message": "Starting deployment...", "level": "info"})]
    for step in range(1, steps + 1):
        out.append(("progress", {"percent": 100 * step / steps, "step": f"step-{step}"}))
        message = config.get("message", f"step {step} done")
        out.append(("log", {"message": message, "level": "info", "step": step}))
    out.append(("complete", {"success": True, "deployment_id": "abc123"}))
    return out


def cursor_of(event: SSEEvent) -> tuple[str, int]:
    assert event.id is not None, f"{event} has no id"
    epoch, _, seq = event.id.rpartition("-")
    return epoch, int(seq)


def typed(events: list[SSEEvent]) -> Expected:
    return [(str(e.event), json.loads(e.data)) for e in events]


def check_run(events: list[SSEEvent], expected: Expected) -> None:
    """``events`` are exactly ``expected``, with ids ``<epoch>-1`` … ``<epoch>-N``."""
    assert typed(events) == expected
    cursors = [cursor_of(e) for e in events]
    [epoch] = {epoch for epoch, _ in cursors}
    assert re.fullmatch(r"[0-9a-z]{1,32}", epoch)
    assert [seq for _, seq in cursors] == list(range(1, len(expected) + 1))


async def resume_trial(deploy_url: str, follow_url: str, rng: random.Random) -> tuple[bool, bool]:
    """Read k events, abort, resume after the last id read; the union must be the whole run.

    Returns ``(resumed after the end, resumed while live)`` (at most one is True).
    """
    config = {"steps": rng.randint(2, 6), "delay": rng.choice([0.0, 0.01, 0.02, 0.04])}
    expected = expected_events(config)
    k = rng.randint(1, len(expected) - 1)
    after_end, query = rng.random() < 0.4, rng.random() < 0.3
    async with deploy(deploy_url, rng.choice(["sync", "async"]), config) as client:
        assert client.status == 200
        stream_id = client.headers["x-stream-id"]
        head = [await client.next_event(10.0) for _ in range(k)]
        client.abort()
    if after_end:  # the stream has ended once a follower from the start reached EOF
        async with follow(follow_url, stream_id) as reference:
            check_run(await read_all(reference), expected)
    async with follow(follow_url, stream_id, head[-1].id, query=query) as again:
        reconnected = time.monotonic()
        rest = await read_all(again)
        live = time.monotonic() - reconnected > 0.008
    check_run(head + rest, expected)
    return after_end, live and not after_end


async def resume_trials(deploy_url: str, follow_url: str, trials: int = 100) -> None:
    outcomes: list[tuple[bool, bool]] = []
    for batch in range(0, trials, 10):
        outcomes += await asyncio.gather(
            *(
                resume_trial(deploy_url, follow_url, random.Random(SEED + i))
                for i in range(batch, min(trials, batch + 10))
            )
        )
    assert len(outcomes) == trials
    assert sum(ended for ended, _ in outcomes) >= 20
    assert sum(live for _, live in outcomes) >= 10


# --- 1. sync and async workers: ordered, numbered, terminal ends the response --------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_worker_events_arrive_in_order_and_end(
    uvicorn_thread: StartUvicornThread, backend: str | None, kind: str
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    config = {"steps": 4, "delay": 0.02}
    # keep-alive, so that a `connection` header could only come from the library
    async with deploy(base_url, kind, config, headers={"connection": "keep-alive"}) as client:
        assert client.status == 200
        events = await read_all(client)  # returns at EOF: the response ended after `complete`
        headers = client.headers
    check_run(events, expected_events(config))
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"
    assert STREAM_ID.fullmatch(headers["x-stream-id"])
    assert "connection" not in headers


# --- 2. resume after Last-Event-ID (header or query): no duplicate, no gap -----------------


@pytest.mark.slow
async def test_resume_after_last_event_id_100_trials(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    await resume_trials(base_url, base_url)


# --- 5. framing cannot be broken by a message ----------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_message_with_line_breaks_is_one_log_event(
    uvicorn_thread: StartUvicornThread, backend: str | None, kind: str
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    config = {"steps": 1, "message": "a\n\nevent: x\ndata: y"}
    async with deploy(base_url, kind, config) as client:
        events = await read_all(client)
    check_run(events, expected_events(config))
    assert [e.event for e in events] == ["log", "progress", "log", "complete"]
    assert json.loads(events[2].data)["message"] == "a\n\nevent: x\ndata: y"


# --- 6. 500 streams of sync workers do not starve a plain sync endpoint --------------------


@pytest.mark.slow
async def test_500_sync_streams_keep_sync_endpoint_responsive(
    uvicorn_thread: StartUvicornThread, clean_env: None
) -> None:
    streams, name = 500, f"gate-{uuid.uuid4().hex}"
    config = {"steps": 2, "gate": name}  # each worker waits at the gate after its first event
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * streams:
        cap = 4 * streams if hard == resource.RLIM_INFINITY else min(hard, 4 * streams)
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, hard))
    base_url, _ = start_deploy(uvicorn_thread, None, worker_threads=streams)
    first_seen = asyncio.Semaphore(0)

    async def one() -> list[SSEEvent]:
        async with deploy(base_url, "sync", config, timeout=60.0) as client:
            assert client.status == 200
            events = [await client.next_event(60.0)]
            first_seen.release()
            return events + await read_all(client, timeout=60.0)

    runs = [asyncio.create_task(one()) for _ in range(streams)]
    try:
        async with asyncio.timeout(60):
            for _ in range(streams):
                await first_seen.acquire()  # every worker has started
        # Every worker now holds a thread, waiting at a gate that opens only after the pings:
        # a /ping that needed one of those threads (a shared, starved pool) would never answer.
        for _ in range(40):
            async with asyncio.timeout(30), SSEClient.connect(base_url, "/ping") as client:
                assert client.status == 200
                assert await client.read_body() == b"pong"
        still_running = sum(not run.done() for run in runs)
        gate(name).set()
        results = await asyncio.wait_for(asyncio.gather(*runs), 60)
    finally:
        gate(name).set()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    assert still_running == streams, "the pings must all come while every worker waits"
    for events in results:
        check_run(events, expected_events(config))


# --- 7. following: after the end, unknown, malformed, someone else's -----------------------


async def test_follow_after_end_gets_history_and_terminal(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    config = {"steps": 3}
    async with deploy(base_url, "async", config) as client:
        stream_id, events = client.headers["x-stream-id"], await read_all(client)
    check_run(events, expected_events(config))
    async with follow(base_url, stream_id) as late:
        assert late.headers["x-stream-id"] == stream_id
        assert await read_all(late) == events
    async with follow(base_url, stream_id, events[3].id) as resumed:
        assert await read_all(resumed) == events[4:]


@pytest.mark.parametrize("start", ["from-cursor", "from-start"])
async def test_follow_trimmed_history_starts_with_one_reset(
    backend: str | None, start: str
) -> None:
    # streams that end: in memory through streaming_mw.testing, no server needed
    container = StreamingContainer()
    init_streaming(
        backend,
        channel_config=ChannelConfig(history_size=4),
        mode="memory" if backend is None else "redis",
        container=container,
    )
    config = {"steps": 4}  # 10 events, the last 4 retained
    async with streaming_client(build_app(container), mode=None, container=container) as http:
        async with http.stream("POST", "/deploy/sync", json=config) as response:
            stream_id, events = response.headers["x-stream-id"], await aread_events(response)
        check_run(events, expected_events(config))
        cursor = events[2].id if start == "from-cursor" else None  # the next event was trimmed
        headers = {"last-event-id": cursor} if cursor else {}
        async with http.stream("GET", f"/streams/{stream_id}", headers=headers) as response:
            reset, *rest = await aread_events(response)
    assert (reset.event, json.loads(reset.data)) == ("reset", {"reason": "expired"})
    assert rest == events[-4:]  # one reset, then what history remains


async def test_follow_unknown_malformed_and_foreign_streams(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    async with follow(base_url, "no-such-stream-0123456789") as client:
        assert client.status == 404
        assert "no-such-stream" in (await client.read_json())["detail"]
    async with follow(base_url, "bad%20id") as client:
        assert client.status == 400
        assert "stream id" in (await client.read_json())["detail"]

    config = {"steps": 2}
    async with deploy(base_url, "async", config, user="alice") as client:
        stream_id, events = client.headers["x-stream-id"], await read_all(client)
    check_run(events, expected_events(config))
    for intruder in ({"x-user": "bob"}, {}):
        # someone else's stream is answered exactly as an unknown one: the id reveals nothing
        async with follow(base_url, stream_id, headers=intruder) as client:
            assert client.status == 404
            assert (await client.read_json())["detail"] == f"no stream {stream_id!r}"
    async with follow(base_url, stream_id, headers={"x-user": "alice"}) as client:
        assert await read_all(client) == events


async def test_a_foreign_stream_can_be_answered_403(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend, hide_foreign_streams=False)
    async with deploy(base_url, "async", {"steps": 1}, user="alice") as client:
        stream_id = client.headers["x-stream-id"]
        await read_all(client)
    async with follow(base_url, stream_id, headers={"x-user": "bob"}) as client:
        assert client.status == 403
        assert "another user" in (await client.read_json())["detail"]


# --- 8. keep-alive pings, then the idle timeout --------------------------------------------


async def test_silent_worker_pings_then_idle_timeout(
    uvicorn_thread: StartUvicornThread, backend: str | None
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend, ping_interval=0.3, max_idle_time=1.0)
    started = time.monotonic()
    async with deploy(base_url, "silent", {"sleep": 1.6}) as client:
        assert client.status == 200
        stream_id = client.headers["x-stream-id"]
        event = await client.next_event(timeout=5.0)
        waited = time.monotonic() - started
        with pytest.raises(EOFError):
            await client.next_event(timeout=5.0)
        comments = list(client.comments)
    assert event.event == "error"
    assert json.loads(event.data)["reason"] == "idle_timeout"
    assert 0.9 <= waited < 1.5
    assert len(comments) >= 2
    assert set(comments) == {"ping"}
    async with follow(base_url, stream_id) as late:  # the worker itself ran to its end
        [complete] = await read_all(late)
    assert (complete.event, json.loads(complete.data)) == ("complete", {"success": True})


# --- 9. failures, cancellation, and workers that outlive their client ----------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_worker_exception_ends_stream_with_error(
    uvicorn_thread: StartUvicornThread, backend: str | None, kind: str
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    # the async worker has no `fail`: it raises on a `steps` that is not a number
    config: dict[str, Any] = {"steps": 2, "fail": True} if kind == "sync" else {"steps": "two"}
    async with deploy(base_url, kind, config) as client:
        events = await read_all(client)
    *rest, error = events
    if kind == "sync":
        assert typed(rest) == expected_events(config)[:-1]
    assert error.event == "error"
    data = json.loads(error.data)
    assert (data["message"], data["reason"]) == ("worker failed", "internal_error")
    assert len(data["error_id"]) == 12
    assert "boom" not in error.data
    assert [cursor_of(e)[1] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("cancel", [True, False], ids=["cancel", "keep-running"])
async def test_client_abort_cancels_worker_only_when_asked(
    uvicorn_thread: StartUvicornThread, backend: str | None, cancel: bool
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, backend)
    config = {"steps": 40, "delay": 0.05, "cancel": cancel}  # ~2 s of work
    async with deploy(base_url, "async", config) as client:
        stream_id = client.headers["x-stream-id"]
        head = [await client.next_event() for _ in range(3)]
        client.abort()
    async with follow(base_url, stream_id) as again:  # the whole history, to its end
        events = await read_all(again)
    assert events[:3] == head
    seqs = [cursor_of(e)[1] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    if not cancel:
        check_run(events, expected_events(config))
        return
    *rest, last = events
    assert "complete" not in {e.event for e in events}
    assert typed(rest) == expected_events(config)[: len(rest)]
    assert len(rest) < 20, "the worker was cancelled soon after the client left"
    assert last.event == "error"
    assert json.loads(last.data)["reason"] == "cancelled"
