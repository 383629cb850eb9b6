"""In-memory OpenTelemetry SDK providers for the telemetry tests, and readers of what they got.

`Capture` holds an explicit ``TracerProvider`` (``SimpleSpanProcessor`` → in-memory exporter)
and ``MeterProvider`` (in-memory reader). Nothing here touches the global providers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from streaming_mw.telemetry import SCOPE

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["Capture", "ancestors", "span_id", "trace_id"]


def trace_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The finished ancestors of ``span``, nearest first (the walk stops at a missing one)."""
    by_id = {span_id(s): s for s in spans}
    chain: list[ReadableSpan] = []
    while span.parent is not None and span.parent.span_id in by_id:
        assert span.parent.trace_id == trace_id(span)
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


class Capture:
    """Explicit SDK providers whose spans and metrics stay in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    # --- spans -------------------------------------------------------------------------

    def spans(self, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """Finished spans, in the order they ended, optionally by name and kind."""
        return [
            s
            for s in self.exporter.get_finished_spans()
            if (name is None or s.name == name) and (kind is None or s.kind is kind)
        ]

    def trace(self, tid: int) -> list[ReadableSpan]:
        """Every finished span of trace ``tid``."""
        return [s for s in self.spans() if trace_id(s) == tid]

    def server_spans(self) -> list[ReadableSpan]:
        return self.spans(kind=SpanKind.SERVER)

    async def wait_spans(
        self,
        name: str,
        count: int = 1,
        *,
        where: Callable[[ReadableSpan], bool] = lambda _: True,
        timeout: float = 5.0,
    ) -> list[ReadableSpan]:
        """Wait until exactly ``count`` spans called ``name`` (matching ``where``) ended."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.spans(name) if where(s)]
            if len(found) >= count:
                assert len(found) == count, f"{len(found)} {name!r} spans, expected {count}"
                return found
            if time.monotonic() > deadline:
                names = sorted({s.name for s in self.spans()})
                raise AssertionError(
                    f"{len(found)} of {count} {name!r} spans within {timeout}s; spans: {names}"
                )
            await asyncio.sleep(0.02)

    # --- metrics -----------------------------------------------------------------------

    def points(self, name: str) -> list[Any]:
        """The data points of the ``streaming_mw`` metric ``name`` (empty if never recorded)."""
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        found: list[Any] = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name != SCOPE:
                    continue
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str) -> float:
        """The sum of a counter or up-down counter, over all its attribute sets."""
        values = []
        for point in self.points(name):
            assert isinstance(point, NumberDataPoint), point
            values.append(point.value)
        return sum(values)

    def histogram(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> tuple[int, float]:
        """``(count, sum)`` of a histogram, over the points having ``attributes``."""
        count, total, attributes = 0, 0.0, attributes or {}
        for point in self.points(name):
            assert isinstance(point, HistogramDataPoint), point
            have = dict(point.attributes or {})
            if all(have.get(key) == value for key, value in attributes.items()):
                count += point.count
                total += point.sum
        return count, total
