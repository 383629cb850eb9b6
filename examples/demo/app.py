"""The streaming_mw demo app: ``scripts/demo`` serves it on http://127.0.0.1:8000.

``/`` is a browser page that shows the streams below as they arrive.
``GET /chat/stream?prompt=...`` streams tokens from a fake LLM (direct streaming).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, StreamingResponse

from streaming_mw import SSE_HEADERS, StreamEvent, encode_stream_event

from .fake_llm import stream_tokens

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STATIC = Path(__file__).parent / "static"

app = FastAPI(title="streaming_mw demo")


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@app.get("/chat/stream")
async def chat_stream(
    prompt: str = Query("What is streaming_mw?", max_length=500),
    delay: float = Query(0.05, ge=0, le=2),
) -> StreamingResponse:
    """Direct streaming: each token is written to the response as the model produces it."""

    async def frames() -> AsyncIterator[bytes]:
        count = 0
        async for token in stream_tokens(prompt, delay=delay):
            count += 1
            yield encode_stream_event(StreamEvent("token", {"token": token}, id=str(count)))
        yield encode_stream_event(StreamEvent("complete", {"success": True, "tokens": count}))

    return StreamingResponse(frames(), headers=dict(SSE_HEADERS))
