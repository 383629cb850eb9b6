"""A FastAPI app that queues jobs for worker processes and streams their events.

Run ``uvicorn examples.jobs.app:app`` and one or more ``streaming-mw worker
examples.jobs.worker:config`` with the same ``REDIS_URL``. Without Redis the jobs run inside
the web process (development only), with the fallback warning.

``POST /jobs/deploy`` → ``{"job_id", "stream_id", "events"}``; ``GET /jobs/{job_id}`` → status;
``DELETE /jobs/{job_id}`` → cancel; ``GET /streams/{stream_id}`` → the job's events (resumable).
Every route takes the caller from the ``X-User`` header (a stand-in for your authentication):
jobs and their streams belong to who started them, and another user gets ``404`` / ``403``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import Response

from streaming_mw import (
    StreamingMiddleware,
    cancel,
    enqueue,
    init_jobs,
    job_status,
    stream_response,
)

from .worker import config

init_jobs(config)  # the queue name, and the processors in-process workers use without Redis

app = FastAPI(title="streaming_mw jobs example")
app.add_middleware(StreamingMiddleware)


async def current_user(x_user: str = Header()) -> str:
    return x_user  # stand-in for your authentication


@app.post("/jobs/{name}")
async def start_job(
    name: str, payload: dict[str, Any], user: str = Depends(current_user)
) -> dict[str, str]:
    operation = f"examples.jobs.tasks.{name}_task"
    if operation not in config.operations_registry:
        raise HTTPException(404, f"no job called {name!r}")
    handle = await enqueue(operation, payload, user_id=user)
    return {
        "job_id": handle.job_id,
        "stream_id": handle.stream_id,
        "events": f"/streams/{handle.stream_id}",
    }


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, user: str = Depends(current_user)) -> dict[str, Any]:
    status = await job_status(job_id, user_id=user)  # another user's job: None, as unknown
    if status is None:
        raise HTTPException(404, "no such job")
    return {"state": status.state, "attempts": status.attempts, "error": status.error}


@app.delete("/jobs/{job_id}")
async def cancel_job(job_id: str, user: str = Depends(current_user)) -> dict[str, bool]:
    return {"cancelled": await cancel(job_id, user_id=user)}


@app.get("/streams/{stream_id}")
async def follow(stream_id: str, request: Request, user: str = Depends(current_user)) -> Response:
    return stream_response(stream_id, request, user_id=user)
