"""The apps `bench.bench_direct` serves with uvicorn, one per case.

Each exposes ``GET /s?n=N``: a stream of N small ``token`` events, produced as fast as possible
(no sleeps), each framed as ``id: <i>\\nevent: token\\ndata: {"token":"x"}\\n\\n``.

- ``raw``: Starlette `StreamingResponse` yielding pre-framed bytes (constant JSON).
- ``raw_json``: the same, each event's dict encoded with orjson and framed by hand: the same
  work per event as ours minus streaming_mw itself (the fair baseline).
- ``fastapi``: a route with ``response_class=EventSourceResponse`` yielding `ServerSentEvent`.
- ``sse_starlette``: `sse_starlette.EventSourceResponse` yielding `ServerSentEvent`.
- ``ours``: FastAPI + `StreamingMiddleware` + ``stream_lease`` + our encoder, `encode`.
- ``ours_event``: the same, each event built as a `StreamEvent` and framed with
  `encode_stream_event` (the value emitters and channels carry).
- ``ours_unbatched``: ``ours`` with ``ChannelConfig(coalesce_writes=False)``: every chunk is its
  own write, as the raw routes' are (in memory mode, whatever the environment says).
- ``ours_resumable``: the same, through `resumable_response` (the generator yields ``"x"``,
  sent as ``token {"token": "x"}`` with an ``<epoch>-<seq>`` id, and every event is recorded in
  the stream's history: memory or Redis, from ``STREAMING_MODE`` / ``REDIS_URL``). Its frames
  include the first ``stream`` event and the final ``complete``, so for ``n`` frames the
  generator yields ``n - 2`` tokens.
- ``ours_traced``: the same route with its own container whose OpenTelemetry providers are the
  SDK's, recording every span into memory and every metric into an in-memory reader.

Serve one with ``python -m uvicorn bench.direct_apps:<case> ...`` (``STREAMING_MODE=memory`` for
``ours``).
"""

from __future__ import annotations

# FastAPI reads a route's return annotation at run time (older pydantic cannot resolve a name
# imported only for type checking), so AsyncIterator is a run-time import here.
from collections.abc import AsyncIterator  # noqa: TC003
from typing import TYPE_CHECKING

import orjson
import sse_starlette
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import StreamingResponse as StarletteStreamingResponse
from starlette.routing import Route

from streaming_mw import (
    ChannelConfig,
    StreamEvent,
    StreamingMiddleware,
    StreamLeaseConfig,
    encode_stream_event,
    init_streaming,
    init_telemetry,
    resumable_response,
    stream_lease,
)
from streaming_mw.runtime import StreamingContainer
from streaming_mw.sse import encode, sse_headers

if TYPE_CHECKING:
    from starlette.requests import Request

    from streaming_mw._types import JSONValue

__all__ = [
    "fastapi",
    "ours",
    "ours_event",
    "ours_resumable",
    "ours_traced",
    "ours_unbatched",
    "raw",
    "raw_json",
    "sse_starlette_app",
]

DATA = '{"token":"x"}'
TOKEN: dict[str, JSONValue] = {"token": "x"}


def _count(request: Request) -> int:
    return int(request.query_params.get("n", "1"))


# raw: Starlette StreamingResponse, pre-framed bytes ------------------------------------------


async def _raw_events(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield f"id: {i}\nevent: token\ndata: {DATA}\n\n".encode()


async def _raw_stream(request: Request) -> StarletteStreamingResponse:
    return StarletteStreamingResponse(_raw_events(_count(request)), headers=sse_headers())


raw = Starlette(routes=[Route("/s", _raw_stream)])


# raw_json: the same, encoding the same dict per event with the same JSON library -------------


async def _raw_json_events(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield f"id: {i}\nevent: token\ndata: ".encode() + orjson.dumps(TOKEN) + b"\n\n"


async def _raw_json_stream(request: Request) -> StarletteStreamingResponse:
    return StarletteStreamingResponse(_raw_json_events(_count(request)), headers=sse_headers())


raw_json = Starlette(routes=[Route("/s", _raw_json_stream)])


# fastapi: native EventSourceResponse ---------------------------------------------------------

fastapi = FastAPI()


@fastapi.get("/s", response_class=EventSourceResponse)
async def _fastapi_stream(n: int = 1) -> AsyncIterator[ServerSentEvent]:
    for i in range(n):
        yield ServerSentEvent(data=TOKEN, event="token", id=str(i))


# sse_starlette -------------------------------------------------------------------------------


async def _sse_starlette_events(n: int) -> AsyncIterator[sse_starlette.ServerSentEvent]:
    for i in range(n):
        yield sse_starlette.ServerSentEvent(data=DATA, event="token", id=str(i))


async def _sse_starlette_stream(request: Request) -> sse_starlette.EventSourceResponse:
    # ping far beyond a run's length, so every frame on the wire is an event
    return sse_starlette.EventSourceResponse(_sse_starlette_events(_count(request)), ping=3600)


sse_starlette_app = Starlette(routes=[Route("/s", _sse_starlette_stream)])


# ours: middleware + stream_lease + our encoder -----------------------------------------------

SERVED = ChannelConfig(freeze_startup_heap=True)
"""What a served app should set (docs/configuration.md, ``freeze_startup_heap``)."""
init_streaming(lease_config=StreamLeaseConfig(limit=1000), channel_config=SERVED)

ours = FastAPI()
ours.add_middleware(StreamingMiddleware)


async def _our_events(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield encode(data=TOKEN, event="token", id=str(i))


@ours.get("/s")
async def _our_stream(n: int = 1) -> StreamingResponse:
    async with stream_lease("bench"):
        return StreamingResponse(_our_events(n), headers=sse_headers())


# ours_unbatched: the same as ours, each chunk its own write (coalesce_writes=False) ------------

_unbatched = StreamingContainer()
init_streaming(
    mode="memory",
    lease_config=StreamLeaseConfig(limit=1000),
    channel_config=ChannelConfig(freeze_startup_heap=True, coalesce_writes=False),
    container=_unbatched,
)
ours_unbatched = FastAPI()
ours_unbatched.add_middleware(StreamingMiddleware, container=_unbatched)
ours_unbatched.add_api_route("/s", _our_stream)


# ours_event: the same, each event a StreamEvent value (what emitters and channels carry) -------

ours_event = FastAPI()
ours_event.add_middleware(StreamingMiddleware)


async def _our_stream_events(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield encode_stream_event(StreamEvent("token", TOKEN, id=str(i)))


@ours_event.get("/s")
async def _our_event_stream(n: int = 1) -> StreamingResponse:
    async with stream_lease("bench"):
        return StreamingResponse(_our_stream_events(n), headers=sse_headers())


# ours_resumable: resumable_response, every event also recorded in the stream's history ---------

ours_resumable = FastAPI()
ours_resumable.add_middleware(StreamingMiddleware)


async def _resumable_tokens(n: int) -> AsyncIterator[str]:
    for _ in range(n - 2):  # + the first `stream` event and the final `complete`
        yield "x"


@ours_resumable.get("/s")
async def _our_resumable_stream(n: int = 2) -> Response:
    async with stream_lease("bench"):
        return resumable_response(_resumable_tokens(n), user_id="bench", resume_grace=0)


# ours_traced: the same, with the OpenTelemetry SDK recording -----------------------------------

spans = InMemorySpanExporter()
"""Every finished span of ``ours_traced`` (cleared by nobody: a run holds a few hundred)."""
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
_traced = StreamingContainer()
init_streaming(
    mode="memory",
    lease_config=StreamLeaseConfig(limit=1000),
    channel_config=SERVED,
    container=_traced,
)
init_telemetry(
    _tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()]), container=_traced
)

ours_traced = FastAPI()
ours_traced.add_middleware(StreamingMiddleware, container=_traced)
ours_traced.add_api_route("/s", _our_stream)


@ours_traced.get("/spans")
async def _span_count() -> dict[str, int]:
    """How many spans the SDK has recorded so far (the benchmark checks they were)."""
    return {"spans": len(spans.get_finished_spans())}
