"""A web app for the job tests: enqueue any operation, inspect, cancel, follow.

``build_app(container)`` for in-thread servers with a private container (configure it with
`init_jobs` / `init_streaming` first); the module-level ``app`` (default container,
``tests.apps.job_tasks:config``, ``JOBS_MAX_IDLE_TIME`` seconds of ``max_idle_time``) for
``uvicorn tests.apps.job_web:app`` in a child process.

``POST /jobs/{operation}`` → ``{job_id, stream_id}``; ``GET /jobs/{job_id}`` → status (404 if
unknown); ``DELETE /jobs/{job_id}`` → ``{cancelled}``; ``GET /dead`` → dead letters;
``GET /streams/{stream_id}`` → the job's events (resumable).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from streaming_mw import (
    ChannelConfig,
    StreamingMiddleware,
    cancel,
    enqueue,
    init_jobs,
    init_streaming,
    job_status,
    stream_response,
)
from streaming_mw.runtime.container import current_container

if TYPE_CHECKING:
    from streaming_mw.jobs import JobQueue
    from streaming_mw.runtime import StreamingContainer


def build_app(container: StreamingContainer | None = None) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.post("/jobs/{operation}")
    async def start_job(operation: str, payload: dict[str, Any]) -> dict[str, str]:
        handle = await enqueue(operation, payload)
        return {"job_id": handle.job_id, "stream_id": handle.stream_id}

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        status = await job_status(job_id, user_id=None)  # a test app: trusted, sees all
        if status is None:
            raise HTTPException(404, "no such job")
        return {
            "state": status.state.value,
            "attempts": status.attempts,
            "worker": status.worker,
            "error": status.error,
            "stream_id": status.stream_id,
        }

    @app.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str) -> dict[str, bool]:
        return {"cancelled": await cancel(job_id, user_id=None)}

    @app.get("/dead")
    async def dead() -> list[list[str]]:
        queue: JobQueue = current_container().job_queue()
        return [list(entry) for entry in await queue.dead_letters()]

    @app.get("/streams/{stream_id}")
    async def follow(stream_id: str, request: Request) -> Response:
        return stream_response(stream_id, request)

    return app


def _default_app() -> FastAPI:
    from tests.apps.job_tasks import make_config

    idle = float(os.environ.get("JOBS_MAX_IDLE_TIME", "300"))
    init_streaming(channel_config=ChannelConfig(max_idle_time=idle))
    init_jobs(make_config())
    return build_app()


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        globals()["app"] = built = _default_app()
        return built
    raise AttributeError(name)
