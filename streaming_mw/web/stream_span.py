"""The span and stream metrics of one event-stream response, as the middleware sees it: opened
when the response starts, closed once when the request ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..telemetry import (
    ATTR_BYTES,
    ATTR_CLOSE,
    ATTR_EVENTS,
    ATTR_RESUME,
    ATTR_STREAM_ID,
    ATTR_USER,
    finish_stream_span,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from starlette.types import Message

    from ..telemetry import Telemetry

__all__ = ["close_stream_span", "open_stream_span"]


def open_stream_span(telemetry: Telemetry, message: Message) -> tuple[Span, str | None]:
    """Start the span of the stream that ``message`` (``http.response.start``) starts; also
    returns its ``X-Stream-ID`` (None for a direct stream)."""
    stream_id: str | None = None
    for name, value in message.get("headers", ()):
        if name.lower() == b"x-stream-id":
            stream_id = bytes(value).decode()
    attributes = {ATTR_STREAM_ID: stream_id} if stream_id else {}
    span = telemetry.stream_span("queue" if stream_id else "direct", attributes)
    telemetry.active_streams.add(1)
    return span, stream_id


def close_stream_span(
    telemetry: Telemetry,
    span: Span,
    reason: str,
    *,
    events: int,
    bytes_sent: int,
    resume_cursor: str | None,
    user_id: str | None,
) -> None:
    """End the span with what the stream sent, and count the stream and its events (once per
    stream, never per event)."""
    finish_stream_span(
        span,
        reason,
        **{
            ATTR_EVENTS: events,
            ATTR_BYTES: bytes_sent,
            ATTR_RESUME: resume_cursor,
            ATTR_USER: telemetry.user(user_id),
        },
    )
    telemetry.active_streams.add(-1)
    telemetry.streams_closed.add(1, {ATTR_CLOSE: reason})
    telemetry.events_sent.add(events)
