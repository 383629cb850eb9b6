"""Jobs inside one process: without Redis `enqueue` runs jobs on the in-process worker.

Apps run in a uvicorn thread with a private container (`tests.apps.job_web`); the examples'
app runs on the default container. The "no worker" answer cannot happen in memory mode (the
local worker always runs), so it is checked on Redis with no worker process at all.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, init_jobs, init_streaming
from streaming_mw.runtime import StreamingContainer
from tests.apps.job_harness import USER
from tests.apps.job_tasks import FAIL, SLOW, SLOW_ASYNC, make_config, read_runs
from tests.apps.job_web import build_app
from tests.helpers.leases import eventually
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from pathlib import Path

    from streaming_mw.sse import SSEEvent
    from tests.helpers.uvicorn_server import StartUvicornThread

AS_USER = {"x-user": USER}  # the example app takes its caller from X-User

FINAL = {"done", "failed", "dead", "cancelled"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Redis in the environment; processors record their runs to the returned file."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("STREAMING_MODE", raising=False)
    run_log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("JOBS_RUN_LOG", str(run_log))
    return run_log


def start_app(
    uvicorn_thread: StartUvicornThread,
    redis_url: str | None = None,
    *,
    max_idle_time: float = 300.0,
    **queue: Any,
) -> str:
    """`tests.apps.job_web` on a private container; auto mode without a URL, else Redis only."""
    container = StreamingContainer()
    channel = ChannelConfig(max_idle_time=max_idle_time)
    if redis_url is None:
        init_streaming(channel_config=channel, container=container)
    else:
        init_streaming(redis_url, channel_config=channel, mode="redis", container=container)
    init_jobs(make_config(redis_url=redis_url, **queue), container=container)
    return uvicorn_thread(build_app(container)).base_url


async def call(base_url: str, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
    async with SSEClient.connect(
        base_url, path, method=method, json=payload, headers=AS_USER
    ) as client:
        return client.status, await client.read_json()


async def start_job(base_url: str, operation: str, payload: dict[str, Any]) -> dict[str, str]:
    status, body = await call(base_url, "POST", f"/jobs/{operation}", payload)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def job(base_url: str, job_id: str) -> dict[str, Any]:
    status, body = await call(base_url, "GET", f"/jobs/{job_id}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def settled(base_url: str, job_id: str) -> dict[str, Any]:
    """The job's status once it is final (a worker records it just after the last event)."""
    found: dict[str, Any] = {}

    async def final() -> bool:
        found.update(await job(base_url, job_id))
        return found["state"] in FINAL

    await eventually(final, timeout=5.0)
    return found


async def read_until_end(client: SSEClient, timeout: float = 10.0) -> list[SSEEvent]:
    assert client.status == 200
    return [event async for event in client.events(timeout)]


def data(event: SSEEvent) -> dict[str, Any]:
    doc = json.loads(event.data)
    assert isinstance(doc, dict)
    return doc


async def test_without_redis_the_job_runs_in_this_process(
    uvicorn_thread: StartUvicornThread, clean_env: Path
) -> None:
    base_url = start_app(uvicorn_thread)
    handle = await start_job(base_url, SLOW, {"steps": 3, "delay": 0.01})
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        events = await read_until_end(client)
    assert [e.event for e in events] == ["progress"] * 3 + ["complete"]
    assert [data(e)["percent"] for e in events[:3]] == [33, 67, 100]
    assert data(events[-1]) == {"success": True, "pid": os.getpid()}
    assert (await settled(base_url, handle["job_id"])) == {
        "state": "done",
        "attempts": 1,
        "worker": "in-process",
        "error": None,
        "stream_id": handle["stream_id"],
    }
    runs = read_runs(clean_env)
    assert [r["ev"] for r in runs] == ["start", "end"]
    assert {r["stream"] for r in runs} == {handle["stream_id"]}


async def test_the_jobs_example_runs_without_redis(
    uvicorn_thread: StartUvicornThread, clean_env: Path
) -> None:
    from examples.jobs.app import app

    base_url = uvicorn_thread(app).base_url
    handle = await start_job(base_url, "deploy", {"app": "shop", "steps": 2, "delay": 0.01})
    assert handle["events"] == f"/streams/{handle['stream_id']}"
    async with SSEClient.connect(base_url, handle["events"], headers=AS_USER) as client:
        events = await read_until_end(client)
    kinds = [e.event for e in events]
    assert kinds == ["log", "progress", "log", "progress", "log", "complete"]
    assert data(events[-1])["success"] is True
    assert data(events[-1])["deployment_id"].startswith("shop-")
    status = await settled(base_url, handle["job_id"])
    assert (status["state"], status["attempts"]) == ("done", 1)


@pytest.mark.parametrize("operation", [SLOW_ASYNC, SLOW])
async def test_cancel_a_running_job_ends_its_stream(
    uvicorn_thread: StartUvicornThread, clean_env: Path, operation: str
) -> None:
    base_url = start_app(uvicorn_thread)
    handle = await start_job(base_url, operation, {"steps": 400, "delay": 0.05})
    job_id = handle["job_id"]
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        first = await client.next_event()
        assert first.event == "progress"
        assert (await job(base_url, job_id))["state"] == "running"
        assert await call(base_url, "DELETE", f"/jobs/{job_id}") == (200, {"cancelled": True})
        started = time.monotonic()
        rest = await read_until_end(client)
    assert time.monotonic() - started < 5.0
    assert rest, "the stream ended without a terminal event"
    assert {e.event for e in rest[:-1]} <= {"progress", "log"}
    assert rest[-1].event == "error"
    assert data(rest[-1]) == {"message": "cancelled", "reason": "cancelled"}
    status = await settled(base_url, job_id)
    assert (status["state"], status["error"]) == ("cancelled", "cancelled")
    assert await call(base_url, "DELETE", f"/jobs/{job_id}") == (200, {"cancelled": False})
    # The processor itself stopped (cancelled, or saw ctx.cancelled), it did not finish.
    runs = [r["ev"] for r in read_runs(clean_env)]
    assert runs == ["start", "abort" if operation == SLOW_ASYNC else "stopped"]


async def test_job_status_of_an_unknown_job(
    uvicorn_thread: StartUvicornThread, clean_env: Path
) -> None:
    base_url = start_app(uvicorn_thread)
    assert (await call(base_url, "GET", "/jobs/nope"))[0] == 404
    assert await call(base_url, "DELETE", "/jobs/nope") == (200, {"cancelled": False})


async def test_unknown_operation_is_dead_lettered(
    uvicorn_thread: StartUvicornThread, clean_env: Path
) -> None:
    base_url = start_app(uvicorn_thread)
    handle = await start_job(base_url, "no.such.operation", {})
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        events = await read_until_end(client)
    assert [e.event for e in events] == ["error"]
    assert data(events[0]) == {
        "message": "unknown operation 'no.such.operation'",
        "reason": "unknown_operation",
    }
    status = await settled(base_url, handle["job_id"])
    assert (status["state"], status["attempts"]) == ("dead", 1)
    assert status["error"] == "unknown operation 'no.such.operation'"
    assert await call(base_url, "GET", "/dead") == (
        200,
        [[handle["job_id"], "unknown operation 'no.such.operation'"]],
    )


async def test_a_failing_job_is_retried_then_dead_lettered(
    uvicorn_thread: StartUvicornThread, clean_env: Path
) -> None:
    # expose_errors: the development setting that names the error in the stream
    base_url = start_app(uvicorn_thread, max_retries=2, retry_backoff=0.05, expose_errors=True)
    handle = await start_job(base_url, FAIL, {"error": "nope"})
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        events = await read_until_end(client)
    messages = [data(e)["message"] for e in events[:-1]]
    assert messages.count("trying") == 3
    assert "attempt 1 failed: RuntimeError: nope; retrying in 0.05s" in messages
    assert "attempt 3 of 3" in messages
    assert events[-1].event == "error"
    last = data(events[-1])
    assert len(last.pop("error_id")) == 12
    assert last == {
        "message": "job failed after 3 attempt(s): RuntimeError: nope",
        "reason": "dead_letter",
    }
    status = await settled(base_url, handle["job_id"])
    assert (status["state"], status["attempts"]) == ("dead", 3)
    assert await call(base_url, "GET", "/dead") == (
        200,
        [[handle["job_id"], "RuntimeError: nope"]],
    )
    assert [r["ev"] for r in read_runs(clean_env)] == ["start"] * 3


async def test_a_silent_running_job_times_out_without_blaming_the_worker(
    uvicorn_thread: StartUvicornThread, clean_env: Path
) -> None:
    base_url = start_app(uvicorn_thread, max_idle_time=0.5)
    handle = await start_job(base_url, SLOW_ASYNC, {"silent": 30, "steps": 1})
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        events = await read_until_end(client)
    assert [e.event for e in events] == ["error"]
    assert data(events[0]) == {"message": "no event for 0.5s", "reason": "idle_timeout"}
    assert (await job(base_url, handle["job_id"]))["state"] == "running"
    assert await call(base_url, "DELETE", f"/jobs/{handle['job_id']}") == (200, {"cancelled": True})


# --- Redis, and no worker process --------------------------------------------------------


@pytest.mark.redis
async def test_no_worker_answers_after_max_idle_time(
    uvicorn_thread: StartUvicornThread, clean_env: Path, redis_url: str
) -> None:
    base_url = start_app(uvicorn_thread, redis_url, max_idle_time=1.0)
    handle = await start_job(base_url, SLOW, {"steps": 1})
    started = time.monotonic()
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        events = await read_until_end(client, timeout=5.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed
    assert [e.event for e in events] == ["error"]
    assert data(events[0]) == {
        "reason": "no_worker",
        "message": f"no worker picked up job {handle['job_id']} within 1s",
        "job_id": handle["job_id"],
    }
    status = await job(base_url, handle["job_id"])
    assert (status["state"], status["attempts"], status["worker"]) == ("queued", 0, None)
    assert read_runs(clean_env) == []


@pytest.mark.redis
async def test_cancel_a_queued_job_ends_its_stream(
    uvicorn_thread: StartUvicornThread, clean_env: Path, redis_url: str
) -> None:
    base_url = start_app(uvicorn_thread, redis_url, max_idle_time=30.0)
    handle = await start_job(base_url, SLOW, {"steps": 1})
    async with SSEClient.connect(
        base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        path = f"/jobs/{handle['job_id']}"
        assert await call(base_url, "DELETE", path) == (200, {"cancelled": True})
        events = await read_until_end(client, timeout=5.0)
    assert [e.event for e in events] == ["error"]
    assert data(events[0]) == {"message": "cancelled", "reason": "cancelled"}
    assert (await job(base_url, handle["job_id"]))["state"] == "cancelled"
    assert await call(base_url, "DELETE", path) == (200, {"cancelled": False})
