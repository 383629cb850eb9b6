"""Acceptance (DESIGN §6): one trace from the HTTP request through a worker process to the SSE
write.

The web app (`tests.apps.traced_web`, FastAPI native telemetry, explicit in-memory providers)
runs in a uvicorn thread on Redis. One request enqueues a job and streams it back. The job runs
in a separate worker process (`tests.apps.traced_worker`), which writes its spans to a file.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from streaming_mw import ChannelConfig, init_jobs, init_streaming
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.container import init_telemetry
from streaming_mw.telemetry import (
    ATTR_CLOSE,
    ATTR_EVENTS,
    ATTR_JOB_ID,
    ATTR_KIND,
    ATTR_OPERATION,
    ATTR_STREAM_ID,
)
from tests.apps.job_harness import Worker
from tests.apps.job_tasks import SLOW_ASYNC, make_config
from tests.apps.otel_capture import Capture, ancestors, span_id, trace_id
from tests.apps.traced_web import build_app
from tests.apps.traced_worker import SPANS_ENV, read_spans
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis.asyncio

    from tests.helpers.uvicorn_server import StartUvicornThread

pytestmark = pytest.mark.redis

STREAM = "sse.stream"
PUBLISH = "default publish"
PROCESS = "default process"


@pytest.fixture
def otel() -> Iterator[Capture]:
    capture = Capture()
    yield capture
    capture.shutdown()


@pytest.fixture
def worker_factory(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Starts traced worker processes (``python -m streaming_mw.worker``); stops them all."""
    monkeypatch.delenv("STREAMING_MODE", raising=False)
    monkeypatch.delenv("JOBS_RUN_LOG", raising=False)
    workers: list[Worker] = []

    def start(spans: Path) -> Worker:
        name = f"traced-{len(workers)}"
        command = [sys.executable, "-m", "streaming_mw.worker", "tests.apps.traced_worker:config"]
        command += ["--concurrency", "2", "--name", name]
        env = {**os.environ, "REDIS_URL": redis_url, SPANS_ENV: str(spans)}
        env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
        worker = Worker(name, command, env, tmp_path / f"{name}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
        print(f"--- worker {worker.name} log ---\n{worker.log_text()}")


async def wait_file_spans(path: Path, name: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one span called ``name`` the worker wrote to ``path``."""
    deadline = time.monotonic() + timeout
    while not (found := [s for s in read_spans(path) if s["name"] == name]):
        if time.monotonic() > deadline:
            names = sorted({s["name"] for s in read_spans(path)})
            raise AssertionError(f"no {name!r} span from the worker in {timeout}s: {names}")
        await asyncio.sleep(0.05)
    assert len(found) == 1, found
    return found[0]


async def test_one_trace_from_request_through_worker_process_to_sse(
    otel: Capture,
    redis_client: redis.asyncio.Redis,
    redis_url: str,
    uvicorn_thread: StartUvicornThread,
    worker_factory: Any,
    tmp_path: Path,
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    worker = worker_factory(spans_file)

    container = StreamingContainer()
    init_streaming(
        redis_url,
        mode="redis",
        channel_config=ChannelConfig(max_idle_time=20),
        container=container,
    )
    init_jobs(make_config(redis_url=redis_url), container=container)
    init_telemetry(otel.tracer_provider, otel.meter_provider, container=container)
    server = uvicorn_thread(build_app(container, otel.tracer_provider, otel.meter_provider))
    await worker.ready()

    path = f"/jobs/{SLOW_ASYNC}/stream"
    payload = {"steps": 3, "delay": 0.05}
    async with SSEClient.connect(
        server.base_url, path, method="POST", json=payload, timeout=10
    ) as client:
        assert client.status == 200
        stream_id = client.headers["x-stream-id"]
        events = [event async for event in client.events(timeout=10)]
    assert [e.event for e in events] == ["progress"] * 3 + ["complete"]

    # (a) the request, (b) the enqueue, (d) the SSE stream: in this process.
    [stream] = await otel.wait_spans(STREAM)
    [producer] = await otel.wait_spans(PUBLISH)
    [request] = await otel.wait_spans(
        "POST /jobs/{operation}/stream", where=lambda s: s.kind is SpanKind.SERVER
    )
    # (c) the job run: in the worker process.
    consumer = await wait_file_spans(spans_file, PROCESS)

    trace = trace_id(request)
    assert request.parent is None
    assert trace_id(producer) == trace == trace_id(stream)
    assert consumer["trace_id"] == f"{trace:032x}"

    assert producer.kind is SpanKind.PRODUCER
    assert request in ancestors(producer, otel.spans())
    produced = dict(producer.attributes or {})
    job_id = produced[ATTR_JOB_ID]
    assert isinstance(job_id, str)
    assert produced[ATTR_OPERATION] == SLOW_ASYNC
    assert produced[ATTR_STREAM_ID] == stream_id

    assert consumer["kind"] == "CONSUMER"
    assert consumer["parent_span_id"] == f"{span_id(producer):016x}"
    assert consumer["attributes"][ATTR_JOB_ID] == job_id
    assert consumer["status"] != "ERROR"

    assert request in ancestors(stream, otel.spans())
    streamed = dict(stream.attributes or {})
    assert streamed[ATTR_KIND] == "queue"
    assert streamed[ATTR_STREAM_ID] == stream_id
    assert streamed[ATTR_CLOSE] == "completed"
    assert streamed[ATTR_EVENTS] == len(events)
    assert stream.status.status_code is StatusCode.UNSET
