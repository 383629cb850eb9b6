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
    "LeaseError",
    "LeaseLost",
    "QueueRedisConfig",
    "SSEComment",
    "SSEEvent",
    "SSEParser",
    "StreamEvent",
    "StreamLeaseConfig",
    "StreamLimitExceeded",
    "StreamingError",
    "StreamingSettings",
    "encode",
    "encode_item",
    "encode_stream_event",
    "load_settings",
    "sse_headers",
]
