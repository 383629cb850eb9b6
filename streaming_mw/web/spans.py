"""The span and the stream metrics of one event stream, opened when its response starts and
closed when it ends (`RequestStreams` calls these)."""

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

__all__ = ["close_span", "open_span"]


def open_span(telemetry: Telemetry, message: Message) -> tuple[Span, str | None]:
    """The stream span for the ``http.response.start`` ``message``, and the stream id its
    ``X-Stream-ID`` header names (None for a direct stream)."""
    stream_id = None
    for name, value in message.get("headers", ()):
        if name.lower() == b"x-stream-id":
            stream_id = bytes(value).decode()
    attributes = {ATTR_STREAM_ID: stream_id} if stream_id else {}
    span = telemetry.stream_span("queue" if stream_id else "direct", attributes)
    telemetry.active_streams.add(1)
    return span, stream_id


def close_span(
    span: Span,
    telemetry: Telemetry,
    reason: str,
    *,
    events: int,
    bytes_sent: int,
    resume: str | None,
    user: str | None,
) -> None:
    """End the stream span with its figures and count the stream as closed for ``reason``."""
    attributes = {
        ATTR_EVENTS: events,
        ATTR_BYTES: bytes_sent,
        ATTR_RESUME: resume,
        ATTR_USER: telemetry.user(user),
    }
    finish_stream_span(span, reason, **attributes)
    telemetry.active_streams.add(-1)
    telemetry.streams_closed.add(1, {ATTR_CLOSE: reason})
    telemetry.events_sent.add(events)
