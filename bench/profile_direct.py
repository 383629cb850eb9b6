"""Where the direct-streaming overhead goes: per-event cost in one process, no network.

The same N pre-framed events served over a raw ASGI channel (a ``send`` that only counts) by:
raw Starlette (`bench.direct_apps.raw`); the same route behind `StreamingMiddleware`; that plus
``stream_lease``; and the full ``ours`` route (which also encodes each event with `encode`),
and ``ours_event`` (`StreamEvent` + `encode_stream_event`). Without uvicorn and sockets, the
differences are streaming_mw's own per-event work. Best of ``--repeat`` runs, interleaved.

Run: python -m bench.profile_direct [--events 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import uvloop
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from streaming_mw import StreamingMiddleware, stream_lease
from streaming_mw.runtime import get_container
from streaming_mw.runtime.startup import start_container
from streaming_mw.sse import sse_headers

from . import direct_apps
from ._harness import serve_asgi

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import ASGIApp


async def _framed(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield f'id: {i}\nevent: token\ndata: {{"token":"x"}}\n\n'.encode()


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


CASES: dict[str, ASGIApp] = {
    "raw Starlette StreamingResponse": direct_apps.raw,
    "+ StreamingMiddleware": _with_middleware(_plain),
    "+ StreamingMiddleware + stream_lease": _with_middleware(_leased),
    "ours: + encode(...) per event": direct_apps.ours,
    "ours_event: + StreamEvent + encode_stream_event": direct_apps.ours_event,
}


async def serve(app: ASGIApp, events: int) -> float:
    """Seconds to serve ``events`` events through ``app`` over a raw ASGI channel."""
    return await serve_asgi(app, "/s", f"n={events}".encode())


async def run(events: int, repeat: int) -> None:
    await start_container(get_container())
    for app in CASES.values():
        await serve(app, 1000)  # warm-up
    best = dict.fromkeys(CASES, float("inf"))
    for _ in range(repeat):
        for name, app in CASES.items():
            best[name] = min(best[name], await serve(app, events))
    base = best["raw Starlette StreamingResponse"]
    print(f"{events:,} events, best of {repeat}, one process, no network")
    print("| case | µs per event | over raw |")
    print("|---|---|---|")
    for name, seconds in best.items():
        per_event = seconds / events * 1e6
        print(f"| {name} | {per_event:.2f} | +{(seconds - base) / events * 1e6:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-event direct-streaming cost in process.")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    uvloop.run(run(args.events, args.repeat))


if __name__ == "__main__":
    main()
