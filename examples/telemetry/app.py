"""Tracing a deployment stream end to end with OpenTelemetry.

``OTEL_EXPORTER=console`` (default) prints finished spans to stdout;
``OTEL_EXPORTER=otlp`` sends them to a collector, Jaeger or Tempo at
``OTEL_EXPORTER_OTLP_ENDPOINT`` (default http://localhost:4318; needs
``pip install opentelemetry-exporter-otlp-proto-http``).

Run: ``uvicorn examples.telemetry.app:app`` then
``curl -N -X POST localhost:8000/deploy -H 'content-type: application/json' -d '{}'``.
streaming_mw only uses ``opentelemetry-api``: the SDK set up here is the application's choice.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

# EventStreamResponse is imported at run time: FastAPI reads a route's return annotation,
# and older pydantic releases cannot resolve a name imported only for type checking.
from streaming_mw import (
    DeploymentEmitter,
    EventStreamResponse,
    StreamingMiddleware,
    get_emitter,
    init_telemetry,
    sse_response,
)


def span_exporter(kind: str) -> SpanExporter:
    """The exporter named by ``OTEL_EXPORTER``: ``console`` or ``otlp``."""
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )

        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    return ConsoleSpanExporter()


def configure_sdk(kind: str = "console") -> tuple[TracerProvider, MeterProvider]:
    """Providers for this example (a real app does this once at start-up)."""
    resource = Resource.create({"service.name": "streaming-mw-example"})
    tracer_provider = TracerProvider(resource=resource)
    exporter = span_exporter(kind)
    processor = SimpleSpanProcessor(exporter) if kind == "console" else BatchSpanProcessor(exporter)
    tracer_provider.add_span_processor(processor)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=30_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    return tracer_provider, meter_provider


async def deploy_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    for step in ("build", "test", "release"):
        await emitter.progress({"build": 30, "test": 60, "release": 90}[step], step=step)
        await emitter.log(f"{step} done")
    await emitter.complete(success=True)


def build_app(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> FastAPI:
    """FastAPI's native telemetry opens the HTTP server span; streaming_mw's spans nest in it."""
    app = FastAPI(
        title="streaming_mw telemetry example",
        telemetry={"tracer_provider": tracer_provider, "meter_provider": meter_provider},
    )
    app.add_middleware(StreamingMiddleware)
    init_telemetry(tracer_provider, meter_provider)  # or rely on the global providers

    @app.post("/deploy")
    async def deploy(
        config: dict[str, Any], emitter: DeploymentEmitter = Depends(get_emitter)
    ) -> EventStreamResponse:
        return await sse_response(emitter, deploy_worker, config)

    return app


def _configured_app() -> FastAPI:
    tracer_provider, meter_provider = configure_sdk(os.environ.get("OTEL_EXPORTER", "console"))
    trace.set_tracer_provider(tracer_provider)  # for every other instrumented library
    metrics.set_meter_provider(meter_provider)
    return build_app(tracer_provider, meter_provider)


def __getattr__(name: str) -> FastAPI:
    if name == "app":  # built on first use, so importing the module configures nothing
        globals()["app"] = built = _configured_app()
        return built
    raise AttributeError(name)
