"""Storage never in the way: the same queue-based stream relayed with storage off, with a
memory store, and with a store whose writes never finish (buffer overflows, writes dropped).
One run, interleaved; the ratio is of median times. Also prints the dropped-write count.

Run: python -m bench.bench_storage [--events 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import TYPE_CHECKING

from streaming_mw import MemoryEventStorage, StreamingContainer, init_event_storage, init_streaming
from streaming_mw.startup import start_container, stop_container

from .bench_telemetry import build, relay

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streaming_mw import StreamEvent


class BlockingStorage(MemoryEventStorage):
    """A store whose writes never finish."""

    async def append(self, events: Sequence[StreamEvent]) -> None:
        await asyncio.Event().wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "storage off": None,
        "memory store": MemoryEventStorage,
        "blocking store": BlockingStorage,
    }
    containers: dict[str, StreamingContainer] = {}
    for name, store in cases.items():
        container = containers[name] = StreamingContainer()
        init_streaming(mode="memory", container=container)
        if store is not None:
            init_event_storage(container=container)
    apps = {name: build(container, args.events) for name, container in containers.items()}
    for name, container in containers.items():
        await start_container(container)
        store = cases[name]
        writer = container.storage_writer()
        if store is not None and writer is not None:
            writer.storage = store()
            writer.write_timeout = 1.0
    times: dict[str, list[float]] = {name: [] for name in apps}
    try:
        for app in apps.values():  # warm-up
            await relay(app)
        for _ in range(args.repeat):
            for name, app in apps.items():
                times[name].append(await relay(app))
        dropped = {
            name: getattr(c.storage_writer(), "dropped", 0) for name, c in containers.items()
        }
    finally:
        for container in containers.values():
            await stop_container(container)
    base = statistics.median(times["storage off"])
    print(f"{args.events} events per stream, {args.repeat} repetitions")
    print("| event storage | events/s min / median / max | time vs off | writes dropped |")
    print("|---|---|---|---|")
    for name, samples in times.items():
        rates = sorted(args.events / t for t in samples)
        print(
            f"| {name} | {rates[0]:,.0f} / {statistics.median(rates):,.0f} / {rates[-1]:,.0f} "
            f"| {statistics.median(samples) / base:.2f}x | {dropped[name]:,} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
