"""A deployment-style app for the queue-based streaming tests: sync and async workers, a
follow route, an owner-restricted route. ``build_app(container)`` for in-thread servers; the
module-level ``app`` (default container, configured from the environment) for subprocesses."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from streaming_mw import (
    DeploymentEmitter,
    StreamingMiddleware,
    get_emitter,
    sse_response,
    stream_response,
    streaming_identity,
)

if TYPE_CHECKING:
    from streaming_mw.runtime import StreamingContainer


GATES: dict[str, threading.Event] = {}
"""Gates a sync worker waits at after its first event (``config["gate"]``), opened by a test
running the server in its own process."""


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


def sync_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """Runs in a worker thread: each call blocks until the event is accepted."""
    steps = int(config.get("steps", 5))
    delay = float(config.get("delay", 0.0))
    emitter.log("Starting deployment...")
    if "gate" in config and not gate(str(config["gate"])).wait(60):
        raise RuntimeError("the gate was never opened")
    for step in range(1, steps + 1):
        time.sleep(delay)
        emitter.progress(100 * step / steps, step=f"step-{step}")
        emitter.log(config.get("message", f"step {step} done"), level="info", step=step)
    if config.get("fail"):
        raise RuntimeError("boom")
    emitter.complete(success=True, deployment_id="abc123")


async def async_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """Runs as a task: the same methods return awaitables."""
    steps = int(config.get("steps", 5))
    delay = float(config.get("delay", 0.0))
    await emitter.log("Starting deployment...")
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        await emitter.progress(100 * step / steps, step=f"step-{step}")
        await emitter.log(config.get("message", f"step {step} done"), step=step)
    await emitter.complete(success=True, deployment_id="abc123")


async def silent_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """Never emits: its followers see keep-alive pings, then the idle timeout."""
    await asyncio.sleep(float(config.get("sleep", 3600)))


def user_header(request: Request) -> str | None:
    return request.headers.get("x-user")


def build_app(container: StreamingContainer | None = None) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)
    app.dependency_overrides[streaming_identity] = user_header
    workers = {"sync": sync_worker, "async": async_worker, "silent": silent_worker}

    @app.post("/deploy/{kind}")
    async def deploy(
        kind: str, config: dict[str, Any], emitter: DeploymentEmitter = Depends(get_emitter)
    ) -> Any:
        return await sse_response(
            emitter, workers[kind], config, cancel_on_disconnect=bool(config.get("cancel"))
        )

    @app.get("/streams/{stream_id}")
    async def follow(stream_id: str, request: Request) -> Any:
        return stream_response(stream_id, request, user_id=user_header(request))

    @app.get("/ping", response_class=PlainTextResponse)
    def ping() -> str:
        """A plain sync endpoint (runs on anyio's thread pool)."""
        return "pong"

    return app


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(name)
