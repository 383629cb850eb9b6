"""A traced worker config: ``python -m streaming_mw.worker tests.apps.traced_worker:config``.

Reading ``config`` (which only the worker process does) installs a global SDK
``TracerProvider`` whose ``SimpleSpanProcessor`` writes every finished span as one JSON line to
the file named by ``TRACED_WORKER_SPANS``: ``{name, kind, trace_id, span_id, parent_span_id,
attributes}`` (ids in hex). The processors are those of `tests.apps.job_tasks`; importing this
module (for `read_spans`) changes nothing in the importing process.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.apps.job_tasks import make_config

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from streaming_mw import QueueConfig

__all__ = ["SPANS_ENV", "JsonLinesSpanExporter", "read_spans", "span_record"]

SPANS_ENV = "TRACED_WORKER_SPANS"


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as a JSON-able dict; ids as 32/16 hex digits."""
    context = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}" if context is not None else None,
        "span_id": f"{context.span_id:016x}" if context is not None else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one JSON line to ``path`` (one ``write`` per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span)) + "\n" for span in spans)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a traced worker wrote to ``path`` (complete lines only)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def _install_tracing() -> None:
    path = os.environ.get(SPANS_ENV)
    if not path:
        raise RuntimeError(f"{SPANS_ENV} must name the file the worker writes its spans to")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(Path(path))))
    trace.set_tracer_provider(provider)


def __getattr__(name: str) -> QueueConfig:
    if name == "config":  # read by the worker CLI only: install tracing there, not on import
        _install_tracing()
        globals()["config"] = built = make_config()
        return built
    raise AttributeError(name)
