"""A FastAPI app for the telemetry tests: queue streams, direct streams, jobs.

``build_app(container, tracer_provider, meter_provider)``: FastAPI's native telemetry is on
with those providers when a tracer provider is given, off otherwise (no SDK anywhere). The
container is the test's private one; configure it (`init_streaming`, `init_jobs`,
`init_telemetry`) before the app starts.

- ``POST /deploy/{kind}`` (``async`` | ``silent``): ``sse_response`` of a new stream.
- ``GET /streams/{stream_id}``: ``stream_response`` (resumes after ``Last-Event-ID``).
- ``GET /chat/stream?user=U&count=N&delay=S``: the seed's ``stream_lease`` snippet, ``429`` at
  the limit.
- ``POST /jobs/{operation}``: ``enqueue`` → ``{job_id, stream_id}``.
- ``POST /jobs/{operation}/stream``: ``enqueue``, then the job's stream in the same response.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from streaming_mw import (
    SSE_HEADERS,
    DeploymentEmitter,
    StreamingMiddleware,
    StreamLimitExceeded,
    enqueue,
    get_emitter,
    sse_response,
    stream_lease,
    stream_response,
)
from streaming_mw.sse import encode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from streaming_mw.runtime import StreamingContainer

__all__ = ["build_app", "steps_worker", "tokens"]


async def steps_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """``steps`` progress events ``delay`` seconds apart, then ``complete`` (``steps + 1``)."""
    steps, delay = int(config.get("steps", 3)), float(config.get("delay", 0.0))
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        await emitter.progress(100 * step / steps, step=f"step-{step}")
    await emitter.complete(success=True)


async def silent_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """Never emits: its stream ends by the idle timeout."""
    await asyncio.sleep(float(config.get("sleep", 3600)))


async def tokens(count: int, delay: float) -> AsyncIterator[bytes]:
    """``count`` SSE ``token`` events ``delay`` seconds apart."""
    for index in range(count):
        if index:
            await asyncio.sleep(delay)
        yield encode(data={"index": index}, event="token", id=str(index))


WORKERS = {"async": steps_worker, "silent": silent_worker}


def build_app(
    container: StreamingContainer,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> FastAPI:
    if tracer_provider is None:
        app = FastAPI()
    else:
        telemetry: TelemetryConfig = {
            "tracer_provider": tracer_provider,
            "meter_provider": meter_provider,
            "logs": False,
            "auto_configure": False,
        }
        app = FastAPI(telemetry=telemetry)
    app.add_middleware(StreamingMiddleware, container=container)

    @app.post("/deploy/{kind}")
    async def deploy(
        kind: str, config: dict[str, Any], emitter: DeploymentEmitter = Depends(get_emitter)
    ) -> Any:
        return await sse_response(emitter, WORKERS[kind], config)

    @app.get("/streams/{stream_id}")
    async def follow(stream_id: str, request: Request) -> Response:
        return stream_response(stream_id, request)

    @app.get("/chat/stream")
    async def chat(user: str, count: int = 10_000, delay: float = 0.05) -> StreamingResponse:
        try:
            async with stream_lease(user) as lease:  # noqa: F841 - the seed's snippet
                return StreamingResponse(tokens(count, delay), headers=dict(SSE_HEADERS))
        except StreamLimitExceeded:
            raise HTTPException(429, "Too many concurrent streams")  # noqa: B904

    @app.post("/jobs/{operation}")
    async def start_job(operation: str, payload: dict[str, Any]) -> dict[str, str]:
        handle = await enqueue(operation, payload)
        return {"job_id": handle.job_id, "stream_id": handle.stream_id}

    @app.post("/jobs/{operation}/stream")
    async def start_and_follow(
        operation: str, payload: dict[str, Any], request: Request
    ) -> Response:
        handle = await enqueue(operation, payload)
        return stream_response(handle.stream_id, request)

    return app
