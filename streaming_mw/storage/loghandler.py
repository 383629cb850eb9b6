"""`StreamLogHandler`: ships application log records through the storage pipeline.

Each record becomes a ``log`` event ``{message, level, logger, trace_id?}`` of the stream being
served or run in the current context (when there is one), in the same buffered, never-blocking
writer as stream events.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace

from ..events import StreamEvent
from ..scope import current_stream

if TYPE_CHECKING:
    from .._types import JSONValue
    from .writer import StorageWriter

__all__ = ["StreamLogHandler"]


class StreamLogHandler(logging.Handler):
    """A `logging.Handler` that stores records as ``log`` events."""

    def __init__(self, writer: StorageWriter, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data: dict[str, JSONValue] = {
                "message": record.getMessage(),
                "level": record.levelname.lower(),
                "logger": record.name,
            }
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                data["trace_id"] = format(span.trace_id, "032x")
            event = StreamEvent("log", data, None, current_stream.get(), record.created)
            self.writer.offer(event)
        except Exception:
            self.handleError(record)
