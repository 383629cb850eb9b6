"""Bad input from a request is answered 400 (413 for a job payload too large) by the middleware,
with a JSON body, one log line and no traceback, and nothing is stored."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from streaming_mw import StreamingMiddleware, enqueue, stream_lease
from streaming_mw.jobs import QueueConfig
from streaming_mw.runtime import StreamingContainer, init_jobs
from tests.helpers.asgi import AsgiClient, lifespan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio


def build_app(container: StreamingContainer) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/stream")
    async def stream(user: str) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: hi\n\n"

        async with stream_lease(user):
            return StreamingResponse(body(), media_type="text/event-stream")

    @app.post("/jobs")
    async def start(size: int) -> JSONResponse:
        handle = await enqueue("op", {"blob": "x" * size}, user_id="alice")
        return JSONResponse({"job_id": handle.job_id})

    return app


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> StreamingContainer:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("STREAMING_MODE", "memory")
    return StreamingContainer()


@pytest.mark.parametrize(
    ("user", "why"),
    [("u" * 300, "300 characters"), ("", "empty")],
)
async def test_an_invalid_user_id_is_400_without_a_traceback(
    container: StreamingContainer, caplog: pytest.LogCaptureFixture, user: str, why: str
) -> None:
    app = build_app(container)
    caplog.set_level(logging.INFO)
    async with lifespan(app):
        client = AsgiClient(app)
        async with client.stream("GET", f"/stream?user={user}") as response:
            assert response.status == 400, why
            assert response.header("content-type") == "application/json"
            body = orjson.loads(await response.read_all())
    assert "user_id must be a non-empty string" in body["detail"]
    assert len(body["detail"]) < 200  # the rejected value is not echoed in full
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a caller's mistake"
    assert [r.levelno for r in caplog.records if "answering 400" in r.getMessage()] == [
        logging.INFO
    ]
    assert container.stream_registry().count() == 0


async def test_a_job_payload_over_the_limit_is_413_and_nothing_is_stored(
    container: StreamingContainer,
) -> None:
    app = build_app(container)
    init_jobs(QueueConfig(max_payload_bytes=4096), container=container)
    async with lifespan(app):
        client = AsgiClient(app)
        async with client.stream("POST", "/jobs?size=5000") as response:
            assert response.status == 413
            body = orjson.loads(await response.read_all())
        async with client.stream("POST", "/jobs?size=100") as small:
            assert small.status == 200
            await small.read_all()
    assert body["limit"] == 4096
    assert body["size"] > 5000
    assert "exceeds the maximum of 4096 bytes" in body["detail"]


@pytest.mark.redis
async def test_a_5_mb_job_payload_writes_nothing_to_redis(
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMING_MODE", "redis")
    container = StreamingContainer()
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app)
        async with client.stream("POST", f"/jobs?size={5 * 1024 * 1024}") as response:
            assert response.status == 413
            await response.read_all()
    assert [key async for key in redis_client.scan_iter("jobs:*")] == []
    assert [key async for key in redis_client.scan_iter("stream:*")] == []
