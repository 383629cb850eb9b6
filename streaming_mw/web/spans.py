"""The span and the stream metrics of one event stream, opened when its response starts and
closed when it ends (`RequestStreams` calls these)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..telemetry import (
    ATTR_BYTES,
    ATTR_CLOSE,
    ATTR_EVENTS,
    ATTR_KIND,
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


def open_span(telemetry: Telemetry, message: Message, kind: str) -> tuple[Span, str | None, str]:
    """The stream span for the ``http.response.start`` ``message``, the stream id its
    ``X-Stream-ID`` header names (None for a direct stream) and the stream's kind: ``kind``
    as the response set it (``resumable``), else ``queue`` when it names a stream id."""
    stream_id = None
    for name, value in message.get("headers", ()):
        if name.lower() == b"x-stream-id":
            stream_id = sys.intern(bytes(value).decode())  # one for the stream's followers
    attributes = {ATTR_STREAM_ID: stream_id} if stream_id else {}
    if stream_id and kind == "direct":
        kind = "queue"
    span = telemetry.stream_span(kind, attributes)
    telemetry.active_streams.add(1, {ATTR_KIND: kind})
    return span, stream_id, kind


def close_span(
    span: Span,
    telemetry: Telemetry,
    reason: str,
    *,
    kind: str,
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
    labels = {ATTR_KIND: kind}
    telemetry.active_streams.add(-1, labels)
    telemetry.streams_closed.add(1, {ATTR_CLOSE: reason, **labels})
    telemetry.events_sent.add(events, labels)
