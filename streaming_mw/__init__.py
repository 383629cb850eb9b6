"""streaming_mw: real-time event delivery for FastAPI.

An ASGI middleware plus a dependency-injection extension: SSE framing, per-user stream leases,
Redis fan-out with an in-memory fallback, lossless resume and OpenTelemetry spans.
"""

from __future__ import annotations

from .config import (
    ChannelConfig,
    QueueRedisConfig,
    StreamingSettings,
    StreamLeaseConfig,
    load_settings,
)
from .container import (
    StreamingContainer,
    StreamingOptions,
    get_container,
    init_lease_limiter,
    init_streaming,
)
from .dependencies import add_exception_handlers, lease_dependency, stream_limit_exceeded_handler
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    EventTooLargeError,
    InvalidCursorError,
    InvalidEventError,
    InvalidFieldError,
    InvalidStreamIdError,
    InvalidUserIdError,
    LeaseError,
    LeaseLost,
    StreamingError,
    StreamLimitExceeded,
)
from .events import TERMINAL_EVENT_TYPES, Cursor, EventType, StreamEvent
from .leases import Lease, LeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from .lifecycle import stream_lease
from .middleware import StreamingMiddleware
from .registry import ActiveStream, StreamRegistry
from .sse import (
    PING,
    SSE_HEADERS,
    SSEComment,
    SSEEvent,
    SSEParser,
    encode,
    encode_item,
    encode_stream_event,
    sse_headers,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "PING",
    "SSE_HEADERS",
    "TERMINAL_EVENT_TYPES",
    "ActiveStream",
    "BackendUnavailableError",
    "ChannelConfig",
    "ConfigurationError",
    "Cursor",
    "EventTooLargeError",
    "EventType",
    "InvalidCursorError",
    "InvalidEventError",
    "InvalidFieldError",
    "InvalidStreamIdError",
    "InvalidUserIdError",
    "Lease",
    "LeaseError",
    "LeaseLimiter",
    "LeaseLost",
    "MemoryLeaseLimiter",
    "QueueRedisConfig",
    "RedisLeaseLimiter",
    "SSEComment",
    "SSEEvent",
    "SSEParser",
    "StreamEvent",
    "StreamLeaseConfig",
    "StreamLimitExceeded",
    "StreamRegistry",
    "StreamingContainer",
    "StreamingError",
    "StreamingMiddleware",
    "StreamingOptions",
    "StreamingSettings",
    "add_exception_handlers",
    "encode",
    "encode_item",
    "encode_stream_event",
    "get_container",
    "init_lease_limiter",
    "init_streaming",
    "lease_dependency",
    "load_settings",
    "sse_headers",
    "stream_lease",
    "stream_limit_exceeded_handler",
]
