"""Where the direct-streaming overhead goes: per-event cost in one process, no network.

The same N events served over a raw ASGI channel (a ``send`` that only counts) by: raw
Starlette yielding constant pre-framed bytes (`bench.direct_apps.raw`); raw Starlette encoding
the event's dict with orjson and framing it by hand (`bench.direct_apps.raw_json`, the fair
baseline); the same FastAPI does (a plain FastAPI route, as ``ours`` is one); the constant bytes
behind `StreamingMiddleware`; that plus ``stream_lease``; the full ``ours`` route (which also
encodes each event with `encode`), and ``ours_event`` (`StreamEvent` + `encode_stream_event`).
Without uvicorn and sockets, the differences are streaming_mw's own per-event work.

Each figure is the best of ``--repeat`` runs, interleaved, in CPU seconds of this process
(`time.process_time`), so other processes on the machine weigh less than in wall time.

``--first-token`` times instead, in wall time, how long after the request the first ``token``
event of a 10-event stream leaves: the plain direct route (``ours``) against the same through
`resumable_response` (``ours_resumable``, memory history), ``--rounds`` interleaved rounds of
``--requests`` requests each, one after another; each round gives its median.

Run: python -m bench.profile_direct [--events 50000] [--repeat 5]
[--first-token [--rounds 5] [--requests 500]]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING, Any

import orjson
import uvloop
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from streaming_mw import StreamingMiddleware, stream_lease
from streaming_mw.runtime import get_container
from streaming_mw.runtime.startup import start_container
from streaming_mw.sse import sse_headers

from . import direct_apps
from ._harness import serve_asgi
from .direct_apps import TOKEN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import ASGIApp


async def _framed(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield f'id: {i}\nevent: token\ndata: {{"token":"x"}}\n\n'.encode()


async def _json_framed(n: int) -> AsyncIterator[bytes]:  # as `direct_apps.raw_json` does
    for i in range(n):
        yield f"id: {i}\nevent: token\ndata: ".encode() + orjson.dumps(TOKEN) + b"\n\n"


def _n(request: Request) -> int:
    return int(request.query_params.get("n", "1"))


async def _plain(request: Request) -> StreamingResponse:
    return StreamingResponse(_framed(_n(request)), headers=sse_headers())


async def _leased(request: Request) -> StreamingResponse:
    async with stream_lease("profile"):
        return StreamingResponse(_framed(_n(request)), headers=sse_headers())


def _with_middleware(endpoint: Any) -> Starlette:
    app = Starlette(routes=[Route("/s", endpoint)])
    app.add_middleware(StreamingMiddleware)
    return app


_fastapi_raw_json = FastAPI()


@_fastapi_raw_json.get("/s")
async def _fastapi_json(n: int = 1) -> StreamingResponse:
    return StreamingResponse(_json_framed(n), headers=sse_headers())


RAW = "raw Starlette StreamingResponse, constant bytes"
FAIR = "raw Starlette StreamingResponse + orjson per event (fair baseline)"
CASES: dict[str, ASGIApp] = {
    RAW: direct_apps.raw,
    FAIR: direct_apps.raw_json,
    "the same in a FastAPI route": _fastapi_raw_json,
    "+ StreamingMiddleware": _with_middleware(_plain),
    "+ StreamingMiddleware + stream_lease": _with_middleware(_leased),
    "ours: + encode(...) per event": direct_apps.ours,
    "ours_event: + StreamEvent + encode_stream_event": direct_apps.ours_event,
}


async def serve(app: ASGIApp, events: int) -> float:
    """CPU seconds to serve ``events`` events through ``app`` over a raw ASGI channel."""
    started = time.process_time()
    await serve_asgi(app, "/s", f"n={events}".encode())
    return time.process_time() - started


async def run(events: int, repeat: int) -> None:
    await start_container(get_container())
    for app in CASES.values():
        await serve(app, 1000)  # warm-up
    best = dict.fromkeys(CASES, float("inf"))
    for _ in range(repeat):
        for name, app in CASES.items():
            best[name] = min(best[name], await serve(app, events))
    print(f"{events:,} events, best of {repeat}, one process, no network, CPU time")
    print("| case | µs per event | over constant bytes | over the fair baseline |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        per_event, raw, fair = (s / events * 1e6 for s in (seconds, best[RAW], best[FAIR]))
        print(f"| {name} | {per_event:.2f} | {per_event - raw:+.2f} | {per_event - fair:+.2f} |")


FIRST_TOKEN = b"event: token\n"
FIRST_TOKEN_CASES: dict[str, ASGIApp] = {
    "ours (not resumable)": direct_apps.ours,
    "ours_resumable (memory history)": direct_apps.ours_resumable,
}


async def first_token(app: ASGIApp) -> float:
    """Seconds from calling ``app`` with ``GET /s?n=10`` to the first body holding a token."""
    first: float | None = None

    def seen(message: Any) -> None:
        nonlocal first
        body = message.get("body", b"") if message["type"] == "http.response.body" else b""
        if first is None and FIRST_TOKEN in body:
            first = time.perf_counter()

    started = time.perf_counter()
    await serve_asgi(app, "/s", b"n=10", on_send=seen)
    if first is None:
        raise RuntimeError("no token event in the response")
    return first - started


async def run_first_token(rounds: int, requests: int) -> None:
    await start_container(get_container())
    for app in FIRST_TOKEN_CASES.values():
        for _ in range(200):  # warm-up
            await first_token(app)
    medians: dict[str, list[float]] = {name: [] for name in FIRST_TOKEN_CASES}
    for _ in range(rounds):
        for name, app in FIRST_TOKEN_CASES.items():
            samples = [await first_token(app) for _ in range(requests)]
            medians[name].append(statistics.median(samples) * 1e6)
    print(f"first token of a 10-event stream, {rounds} rounds x {requests} requests, one process")
    print("| case | µs, round medians min / median / max |")
    print("|---|---|")
    for name, values in medians.items():
        low, mid, high = min(values), statistics.median(values), max(values)
        print(f"| {name} | {low:.0f} / {mid:.0f} / {high:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-event direct-streaming cost in process.")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--first-token", action="store_true", help="time the first token")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    if args.first_token:
        uvloop.run(run_first_token(args.rounds, args.requests))
    else:
        uvloop.run(run(args.events, args.repeat))


if __name__ == "__main__":
    main()
