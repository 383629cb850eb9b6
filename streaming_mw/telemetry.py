"""OpenTelemetry spans and metrics, through ``opentelemetry-api`` only (DESIGN §6).

The application chooses the SDK; with none configured every call here is a no-op. `Telemetry`
binds a tracer and the instruments to the providers it is given (the global ones by default,
resolved lazily, so an SDK configured after import is picked up).

Spans: one ``sse.stream`` span per stream response (child of the HTTP server span), a PRODUCER
span for each ``enqueue`` and around each `sse_response` worker run (``stream publish``), a
CONSUMER span per job run in the worker, linked to the request through the W3C
``traceparent`` carried in the job envelope. No span per event.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractContextManager

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_BYTES",
    "ATTR_CLOSE",
    "ATTR_ERROR_ID",
    "ATTR_EVENTS",
    "ATTR_JOB_ID",
    "ATTR_KIND",
    "ATTR_LEASE_OPERATION",
    "ATTR_LEASE_OUTCOME",
    "ATTR_LEASE_SCOPE",
    "ATTR_OPERATION",
    "ATTR_OUTCOME",
    "ATTR_RESUME",
    "ATTR_STREAM_ID",
    "ATTR_USER",
    "SCOPE",
    "Telemetry",
    "UserIdPolicy",
    "extract_traceparent",
    "finish_stream_span",
    "inject_traceparent",
]

SCOPE: Final = "streaming_mw"

UserIdPolicy: TypeAlias = Literal["raw", "hash", "drop"]
"""How user ids appear in spans: as they are, as a pseudonym (the first 16 hex digits of their
SHA-256: stable, so one user's streams still group together, but not the address itself), or
not at all."""

_LAG_BUCKETS: Final = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
]
_WAIT_BUCKETS: Final = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]
_JOB_BUCKETS: Final = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]

ATTR_STREAM_ID: Final = "streaming_mw.stream.id"
ATTR_USER: Final = "streaming_mw.user.id"
ATTR_EVENTS: Final = "streaming_mw.stream.events_sent"
ATTR_BYTES: Final = "streaming_mw.stream.bytes_sent"
ATTR_RESUME: Final = "streaming_mw.stream.resume_cursor"
ATTR_CLOSE: Final = "streaming_mw.stream.close_reason"
ATTR_KIND: Final = "streaming_mw.stream.kind"
ATTR_JOB_ID: Final = "streaming_mw.job.id"
ATTR_OPERATION: Final = "streaming_mw.job.operation"
ATTR_ATTEMPT: Final = "streaming_mw.job.attempt"
ATTR_OUTCOME: Final = "streaming_mw.job.outcome"
ATTR_ERROR_ID: Final = "streaming_mw.error.id"
ATTR_LEASE_SCOPE: Final = "streaming_mw.lease.scope"
ATTR_LEASE_OUTCOME: Final = "streaming_mw.lease.outcome"
ATTR_LEASE_OPERATION: Final = "streaming_mw.lease.operation"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streaming-mw")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class Telemetry:
    """The tracer and metric instruments of one container."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        user_ids: UserIdPolicy = "raw",
    ) -> None:
        self.user_ids = user_ids
        version = _version()
        self.tracer = trace.get_tracer(SCOPE, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, version, meter_provider=meter_provider)
        self.active_streams = meter.create_up_down_counter(
            "streaming_mw.streams.active", unit="{stream}", description="Open stream responses"
        )
        self.streams_closed = meter.create_counter(
            "streaming_mw.streams.closed",
            unit="{stream}",
            description="Stream responses ended, by close_reason",
        )
        self.events_sent = meter.create_counter(
            "streaming_mw.events.sent", unit="{event}", description="Events written to clients"
        )
        self.lease_rejections = meter.create_counter(
            "streaming_mw.leases.rejected",
            unit="{lease}",
            description="Stream lease acquisitions refused at the limit, by scope (user, global)",
        )
        self.leases_acquired = meter.create_counter(
            "streaming_mw.leases.acquired", unit="{lease}", description="Stream leases taken"
        )
        self.leases_released = meter.create_counter(
            "streaming_mw.leases.released", unit="{lease}", description="Stream leases given back"
        )
        self.leases_lost = meter.create_counter(
            "streaming_mw.leases.lost",
            unit="{lease}",
            description="Held stream leases found expired or removed when refreshed",
        )
        self.lease_wait = meter.create_histogram(
            "streaming_mw.leases.wait",
            unit="s",
            description="Time a stream waited for a lease slot, by outcome (acquired, rejected)",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self.lease_backend_errors = meter.create_counter(
            "streaming_mw.leases.backend_errors",
            unit="{error}",
            description="Lease operations that could not reach Redis, by operation",
        )
        self.storage_dropped = meter.create_counter(
            "streaming_mw.storage.dropped",
            unit="{event}",
            description="Events that never reached event storage (buffer full or store failing)",
        )
        self.delivery_lag = meter.create_histogram(
            "streaming_mw.delivery.lag",
            unit="s",
            description="Time from an event's publication to its write to the client",
            explicit_bucket_boundaries_advisory=_LAG_BUCKETS,
        )
        self.job_duration = meter.create_histogram(
            "streaming_mw.job.duration",
            unit="s",
            description="Job run time, by outcome",
            explicit_bucket_boundaries_advisory=_JOB_BUCKETS,
        )

    def user(self, user_id: str | None) -> str | None:
        """``user_id`` as the ``user_ids`` policy lets it appear in a span (None: leave it out)."""
        if user_id is None or self.user_ids == "drop":
            return None
        if self.user_ids == "hash":
            return hashlib.sha256(user_id.encode()).hexdigest()[:16]
        return user_id

    def stream_span(self, kind: str, attributes: Mapping[str, Any] | None = None) -> Span:
        """Start the span of one stream response (ended by the caller)."""
        attrs = {ATTR_KIND: kind, **(attributes or {})}
        return self.tracer.start_span("sse.stream", attributes=attrs)

    def producer(self, name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Span]:
        """A PRODUCER span around publishing or enqueuing."""
        return self.tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes
        )

    def consumer(
        self, name: str, traceparent: str | None, attributes: Mapping[str, Any]
    ) -> AbstractContextManager[Span]:
        """A CONSUMER span, child of the context carried in ``traceparent``."""
        parent = extract_traceparent(traceparent)
        return self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )


def finish_stream_span(span: Span, close_reason: str, **attributes: Any) -> None:
    """Record how a stream ended and end its span. A client disconnect is a normal close."""
    span.set_attribute(ATTR_CLOSE, close_reason)
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
    if close_reason == "error":
        span.set_status(Status(StatusCode.ERROR, "stream ended by an error"))
    span.end()


def inject_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, if one is being recorded."""
    carrier: dict[str, str] = {}
    propagate.get_global_textmap().inject(carrier)
    return carrier.get("traceparent")


def extract_traceparent(traceparent: str | None) -> otel_context.Context | None:
    """The context a ``traceparent`` header names (None when there is none)."""
    if not traceparent:
        return None
    return propagate.get_global_textmap().extract({"traceparent": traceparent})
