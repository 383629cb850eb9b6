"""Telemetry cost: the same queue-based stream relayed with no OpenTelemetry SDK (the API's
no-op, what a library user gets by default) and with the SDK recording spans and metrics into
memory. Both in one run, interleaved, through the real middleware and response over a raw ASGI
channel (no network), so the difference is streaming_mw's telemetry work.

Run: python -m bench.bench_telemetry [--events 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from fastapi import Depends, FastAPI
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streaming_mw import (
    DeploymentEmitter,
    StreamingContainer,
    StreamingMiddleware,
    get_emitter,
    init_streaming,
    init_telemetry,
    sse_response,
)
from streaming_mw.startup import start_container, stop_container


def build(container: StreamingContainer, events: int) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    async def worker(config: Any, emitter: DeploymentEmitter) -> None:
        for index in range(events):
            await emitter.log("x", n=index)
        await emitter.complete()

    @app.get("/s")
    async def stream(emitter: DeploymentEmitter = Depends(get_emitter)) -> Any:
        return await sse_response(emitter, worker, None)

    return app


async def relay(app: FastAPI) -> float:
    """Seconds to serve one whole stream through the ASGI app."""
    done = asyncio.Event()
    received = 0
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/s",
        "raw_path": b"/s",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal received
        if message["type"] == "http.response.body":
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    start = time.perf_counter()
    await app(scope, receive, send)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    plain, traced = StreamingContainer(), StreamingContainer()
    for container in (plain, traced):
        init_streaming(mode="memory", container=container)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    init_telemetry(tracer_provider, MeterProvider(metric_readers=[reader]), container=traced)
    apps = {
        "no SDK (no-op)": build(plain, args.events),
        "SDK, in-memory": build(traced, args.events),
    }
    for container in (plain, traced):
        await start_container(container)
    times: dict[str, list[float]] = {name: [] for name in apps}
    try:
        for app in apps.values():  # warm-up
            await relay(app)
        for _ in range(args.repeat):
            for name, app in apps.items():
                times[name].append(await relay(app))
    finally:
        for container in (plain, traced):
            await stop_container(container)
    base = statistics.median(times["no SDK (no-op)"])
    recorded = len(spans.get_finished_spans())
    print(f"{args.events} events per stream, {args.repeat} repetitions; spans: {recorded}")
    print("| telemetry | events/s min / median / max | time vs no SDK |")
    print("|---|---|---|")
    for name, samples in times.items():
        rates = sorted(args.events / t for t in samples)
        ratio = statistics.median(samples) / base
        print(
            f"| {name} | {rates[0]:,.0f} / {statistics.median(rates):,.0f} / {rates[-1]:,.0f} "
            f"| {ratio:.2f}x |"
        )


if __name__ == "__main__":
    asyncio.run(main())
