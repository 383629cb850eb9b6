"""The streaming_mw demo app: ``scripts/demo`` serves it on http://127.0.0.1:8000.

``/`` is a browser page that shows the streams below as they arrive.
``GET /chat/stream?prompt=...&user=...`` streams tokens from a fake LLM (a resumable direct
stream) while holding one of the user's stream leases (3 per user here); a fourth concurrent
stream gets 429. The page keeps the answer's stream id in ``sessionStorage``: reload it
mid-answer and it follows ``/streams/{id}`` from the last token it showed.
``POST /streams/{id}/cancel`` is the chat's stop button.
``POST /deploy`` starts a deployment (queue-based streaming) and streams its logs and progress;
``GET /streams/{stream_id}`` follows it again, resuming after ``Last-Event-ID``.
``GET /streams`` lists the streams this process is serving.

Without ``REDIS_URL`` everything runs in memory; with it, leases are shared by every process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from streaming_mw import (
    DeploymentEmitter,
    EventStreamResponse,
    StreamEvent,
    StreamingMiddleware,
    StreamLeaseConfig,
    StreamLimitExceeded,
    get_emitter,
    init_streaming,
    resumable_response,
    sse_response,
    stream_lease,
    stream_response,
    streaming_identity,
)
from streaming_mw.runtime import get_container
from streaming_mw.web import cancel_stream_response
from streaming_mw.web.openapi import EMITTER_EVENTS, TOKEN_EVENTS, stream_route

from .deploy import deploy_worker
from .fake_llm import stream_tokens

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STATIC = Path(__file__).parent / "static"
LEASES_PER_USER = 3

init_streaming(lease_config=StreamLeaseConfig(limit=LEASES_PER_USER, ttl_seconds=60))

app = FastAPI(title="streaming_mw demo")
app.add_middleware(StreamingMiddleware)


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def demo_user(user: str = Query("demo", min_length=1, max_length=64)) -> str:
    """The caller (a stand-in for your authentication: the page sends ``?user=``)."""
    return user


# Streams belong to their caller: get_emitter gives each new stream this owner, and only that
# user may follow it again.
app.dependency_overrides[streaming_identity] = demo_user


@app.get("/chat/stream", **stream_route(TOKEN_EVENTS, limited=True))
async def chat_stream(
    prompt: str = Query("What is streaming_mw?", max_length=500),
    user: str = Query("demo", min_length=1, max_length=64),
    delay: float = Query(0.05, ge=0, le=2),
) -> Response:
    """A resumable direct stream: each token is written as the model produces it, under a
    lease, and recorded so that a reloaded page continues the answer (``/streams/{id}``)."""

    async def tokens() -> AsyncIterator[StreamEvent]:
        count = 0
        async for token in stream_tokens(prompt, delay=delay):
            count += 1
            yield StreamEvent("token", {"token": token})
        yield StreamEvent("complete", {"success": True, "tokens": count})

    try:
        async with stream_lease(user):
            return resumable_response(tokens(), user_id=user, resume_grace=30)
    except StreamLimitExceeded as exc:
        raise HTTPException(
            429,
            f"{user!r} already has {exc.limit} streams open",
            headers={"Retry-After": str(int(exc.retry_after))},
        ) from None


@app.post("/streams/{stream_id}/cancel")
async def stop_answer(stream_id: str, user: str = Depends(demo_user)) -> Response:
    """The chat's stop button: closes the answer's generator, wherever it runs."""
    return await cancel_stream_response(stream_id, user_id=user)


class DeployRequest(BaseModel):
    app: str = Field("shop-api", min_length=1, max_length=64)
    environment: str = Field("staging", min_length=1, max_length=32)
    delay: float = Field(0.6, ge=0, le=5)


@app.post("/deploy", **stream_route(EMITTER_EVENTS))
async def deploy(
    request: DeployRequest, emitter: DeploymentEmitter = Depends(get_emitter)
) -> EventStreamResponse:
    """Queue-based streaming: the worker runs in the background, the response relays it."""
    return await sse_response(emitter, deploy_worker, request.model_dump())


@app.get("/streams/{stream_id}", **stream_route(EMITTER_EVENTS, resumes=True))
async def follow(stream_id: str, request: Request, user: str = Depends(demo_user)) -> Response:
    """Follow a stream again, e.g. after a network drop: resumes after ``Last-Event-ID``.
    Another user's stream is answered ``404``, as an unknown one."""
    return stream_response(stream_id, request, user_id=user)


@app.get("/streams")
async def streams() -> dict[str, object]:
    """The streams this process serves right now, and the lease limit per user."""
    registry = get_container().stream_registry()
    return {
        "total": registry.count(),
        "by_user": registry.by_user(),
        "limit_per_user": LEASES_PER_USER,
    }
