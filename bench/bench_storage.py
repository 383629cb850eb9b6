"""Storage never in the way: the same queue-based stream relayed with event storage off, with a
memory store, and with a store whose writes never finish (buffer overflows, writes dropped).

In one process, through the real middleware and response over a raw ASGI channel (no network),
so the difference is streaming_mw's storage work. One run, interleaved; the ratio is of median
rates. Also records the dropped-write count.

Run: python -m bench.bench_storage [--events 20000] [--repeat 5] [--quick] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from streaming_mw import (
    DeploymentEmitter,
    StreamingMiddleware,
    get_emitter,
    init_streaming,
    sse_response,
)
from streaming_mw.runtime import StreamingContainer, init_event_storage
from streaming_mw.runtime.startup import start_container, stop_container
from streaming_mw.storage import MemoryEventStorage

from ._harness import Result, common_args, serve_asgi

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streaming_mw import StreamEvent

DESCRIPTION = """\
Delivery must never wait for the event store. The same queue-based stream (N `log` events from
an async worker, memory channels) is relayed through `StreamingMiddleware` and
`EventStreamResponse` over a raw ASGI channel in one process, with event storage off, with the
in-process memory store, and with a store whose writes never finish (every write ends up
dropped and counted). The three are interleaved in one run; this is an in-process measure, not
a network one, so the difference is streaming_mw's own storage work."""


class BlockingStorage(MemoryEventStorage):
    """A store whose writes never finish."""

    async def append(self, events: Sequence[StreamEvent]) -> None:
        await asyncio.Event().wait()


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


async def run(args: argparse.Namespace) -> None:
    result = Result("storage", "Event storage cost", DESCRIPTION)
    cases = {
        "off": ("storage off", None),
        "memory": ("memory store", MemoryEventStorage),
        "blocking": ("store that never finishes a write", BlockingStorage),
    }
    containers: dict[str, StreamingContainer] = {}
    for case, (_, store) in cases.items():
        container = containers[case] = StreamingContainer()
        init_streaming(mode="memory", container=container)
        if store is not None:
            init_event_storage(container=container)
    apps = {case: build(container, args.events) for case, container in containers.items()}
    for case, container in containers.items():
        await start_container(container)
        store = cases[case][1]
        writer = container.storage_writer()
        if store is not None and writer is not None:
            writer.storage = store()
            writer.write_timeout = 1.0
    times: dict[str, list[float]] = {case: [] for case in apps}
    try:
        for app in apps.values():  # warm-up
            await serve_asgi(app)
        for _ in range(args.repeat):
            for case, app in apps.items():
                times[case].append(await serve_asgi(app))
        dropped = {
            case: getattr(c.storage_writer(), "dropped", 0) for case, c in containers.items()
        }
    finally:
        for container in containers.values():
            await stop_container(container)
    table = result.table(f"1 stream x {args.events:,} events, in process", "events/s")
    table.baseline = "off"
    for case, (label, _) in cases.items():
        table.add(case, label, [args.events / t for t in times[case]])
        result.notes.append(f"{label}: {dropped[case]:,} writes dropped over the run.")
    result.save(args.output)


def main() -> None:
    parser = argparse.ArgumentParser(description="Event storage cost.")
    common_args(parser)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.events = 1, 500
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
