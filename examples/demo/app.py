"""The streaming_mw demo app: ``scripts/demo`` serves it on http://127.0.0.1:8000.

``/`` is a browser page that shows the streams below as they arrive.
``GET /chat/stream?prompt=...&user=...`` streams tokens from a fake LLM (direct streaming) while
holding one of the user's stream leases (3 per user here); a fourth concurrent stream gets 429.
``GET /streams`` lists the streams this process is serving.

Without ``REDIS_URL`` everything runs in memory; with it, leases are shared by every process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, StreamingResponse

from streaming_mw import (
    StreamEvent,
    StreamingMiddleware,
    StreamLeaseConfig,
    StreamLimitExceeded,
    encode_stream_event,
    get_container,
    init_streaming,
    sse_headers,
    stream_lease,
)

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


@app.get("/chat/stream")
async def chat_stream(
    prompt: str = Query("What is streaming_mw?", max_length=500),
    user: str = Query("demo", min_length=1, max_length=64),
    delay: float = Query(0.05, ge=0, le=2),
) -> StreamingResponse:
    """Direct streaming: each token is written as the model produces it, under a lease."""

    async def frames() -> AsyncIterator[bytes]:
        count = 0
        async for token in stream_tokens(prompt, delay=delay):
            count += 1
            yield encode_stream_event(StreamEvent("token", {"token": token}, id=str(count)))
        yield encode_stream_event(StreamEvent("complete", {"success": True, "tokens": count}))

    try:
        async with stream_lease(user):
            return StreamingResponse(frames(), headers=sse_headers())
    except StreamLimitExceeded as exc:
        raise HTTPException(
            429,
            f"{user!r} already has {exc.limit} streams open",
            headers={"Retry-After": str(int(exc.retry_after))},
        ) from None


@app.get("/streams")
async def streams() -> dict[str, object]:
    """The streams this process serves right now, and the lease limit per user."""
    registry = get_container().stream_registry()
    return {
        "total": registry.count(),
        "by_user": registry.by_user(),
        "limit_per_user": LEASES_PER_USER,
    }
