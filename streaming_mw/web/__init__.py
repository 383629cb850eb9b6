"""The web edge: everything that touches ASGI, Starlette or FastAPI. The only layer that imports
FastAPI.

- `middleware`: `StreamingMiddleware` (lifespan wiring; per-request tracking; 429/503 answers);
- `tracking`: one request's leases and stream, released exactly once when it ends (its span
  and metrics in `spans`, the cuts' last frames in `frames`);
- `deadline`: `WriteWatchdog`, ending a stream whose client stopped reading (write deadline);
- `lease`: `stream_lease`, a stream lease owned by the current request;
- `responses`: `EventStreamResponse`, the event-stream response with pings and idle timeout;
- `routes`: `sse_response` (seed pattern 2), `stream_response` (follow / resume) and
  `readiness_response` (a readiness probe that turns 503 when the process drains);
- `resumable`: `resumable_response` (a direct stream that can be resumed on any process),
  `cancel_stream` and `cancel_stream_response`; its producer lives in `generation`;
- `dependencies`: FastAPI dependencies (`get_emitter`, `lease_dependency`, the 429 handler);
- `context`: the request being handled, as a ContextVar;
- `openapi`: `stream_route`, declaring a streaming route truthfully in OpenAPI.
"""

from __future__ import annotations

from .dependencies import (
    add_exception_handlers,
    get_emitter,
    lease_dependency,
    stream_limit_exceeded_handler,
    streaming_identity,
)
from .lease import stream_lease
from .middleware import StreamingMiddleware
from .openapi import EMITTER_EVENTS, TOKEN_EVENTS, stream_route
from .responses import EventStreamResponse
from .resumable import (
    ResumableResponse,
    cancel_stream,
    cancel_stream_response,
    resumable_response,
)
from .routes import readiness_response, sse_response, stream_response

__all__ = [
    "EMITTER_EVENTS",
    "TOKEN_EVENTS",
    "EventStreamResponse",
    "ResumableResponse",
    "StreamingMiddleware",
    "add_exception_handlers",
    "cancel_stream",
    "cancel_stream_response",
    "get_emitter",
    "lease_dependency",
    "readiness_response",
    "resumable_response",
    "sse_response",
    "stream_lease",
    "stream_limit_exceeded_handler",
    "stream_response",
    "stream_route",
    "streaming_identity",
]
