"""What one idle follower holds in the server process, for diagnosis: Python objects by type
(count and ``sys.getsizeof`` bytes) and resident memory, per follower.

Run: python -m bench.follower_heap [--followers 2000] [--top 25] [--survivors | --lines]

Starts ``bench.queue_apps:ours`` in Redis mode with ``BENCH_HEAP=1`` (a ``/heap`` route that
counts the objects the garbage collector tracks), opens ``--followers`` followers of one
stream with the client of ``bench.bench_concurrency``, and prints the growth per follower.
Objects the collector does not track (``bytes``, ``str``, ``int``, …) and memory outside
Python objects (sockets, uvloop's handles, httptools' parser) are only in the RSS line.

``--survivors`` counts instead what one published event leaves alive in the server, per
follower, with the collector stopped from just before the publish: the objects each event adds
to the generations a full collection walks.

``--lines`` lists instead what the followers allocated by the source line that allocated it
(``tracemalloc``, started just before they connect): every object, tracked by the collector
or not, with its size, so the library's own share can be read line by line. An allocation
made from C (uvloop's transport and handles) is charged to the last Python line running, the
event loop's. Tracing makes the server several times slower and its RSS larger.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
import urllib.request
from collections import Counter
from typing import Any

import orjson


def heap() -> dict[str, Any]:
    """Objects the collector tracks, by type: ``{type: [count, bytes]}`` (server side)."""
    gc.collect()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        code = getattr(obj, "cr_code", None)
        if code is not None:  # a coroutine: by its function, the deepest frames are the cost
            name = f"{name} {code.co_qualname}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return {name: [counts[name], sizes[name]] for name in counts}


def traced_lines(step: str) -> dict[str, Any]:
    """``start``: trace allocations from now on; ``diff``: what is still allocated since, by
    the source line that allocated it: ``{line: [count, bytes]}``."""
    if step == "start":
        gc.collect()
        tracemalloc.start(1)
        _TRACED.append(tracemalloc.take_snapshot())
        return {}
    gc.collect()
    growth = tracemalloc.take_snapshot().compare_to(_TRACED.pop(), "lineno")
    tracemalloc.stop()
    return {str(stat.traceback): [stat.count_diff, stat.size_diff] for stat in growth}


_TRACED: list[tracemalloc.Snapshot] = []


def young_objects(step: str) -> dict[str, Any]:
    """``mark``: collect, then stop the collector, so every object made from now on stays in
    the youngest generation; ``count``: those still alive, by type, and start the collector
    again. Between the two, what outlives one event is what the next full collection walks."""
    if step == "mark":
        gc.collect()
        gc.disable()
        return {}
    counts: Counter[str] = Counter()
    for obj in gc.get_objects(generation=0):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        code = getattr(obj, "cr_code", None)
        counts[name if code is None else f"{name} {code.co_qualname}"] += 1
    gc.enable()
    return {name: [count, 0] for name, count in counts.items()}


def main() -> None:
    from streaming_mw import StreamEvent
    from streaming_mw.channels.redis import SyncRedisChannel

    from ._harness import Uvicorn, redis_server, stop
    from .bench_concurrency import ClientRun, warm_up

    parser = argparse.ArgumentParser(description="What one idle follower holds.")
    parser.add_argument("--followers", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--survivors", action="store_true", help="what one event leaves alive")
    modes.add_argument("--lines", action="store_true", help="what they hold, by source line")
    args = parser.parse_args()
    import redis

    with redis_server() as url:
        channel = SyncRedisChannel(redis.Redis.from_url(url))
        channel.create("heap")
        server = Uvicorn(
            "bench.queue_apps:ours",
            {"REDIS_URL": url, "STREAMING_MODE": "redis", "BENCH_HEAP": "1"},
        )
        server.start().wait(120)
        client: ClientRun | None = None
        try:
            warm_up(server.port, "/streams/heap")
            time.sleep(0.5)

            def snapshot(young: str = "", trace: str = "") -> dict[str, list[int]]:
                query = f"?young={young}" if young else f"?trace={trace}" if trace else ""
                url = server.base_url + "/heap" + query
                with urllib.request.urlopen(url, timeout=120) as answer:  # noqa: S310
                    found: dict[str, list[int]] = orjson.loads(answer.read())
                return found

            snapshot()  # its own allocations stay in the process: out of the difference
            rss0, before = server.rss_bytes(), snapshot()
            if args.lines:
                snapshot(trace="start")
            events = 2 if args.survivors else 0
            client = ClientRun(server.port, args.followers, "/streams/heap", "headers", events, 200)
            client.next(timeout=300)
            time.sleep(1.0)
            if args.survivors:  # the first event goes out with the `retry:` field: not counted
                channel.publish("heap", StreamEvent("progress", {"t": time.monotonic_ns(), "i": 0}))
                client.next(timeout=120)
                time.sleep(0.5)
                snapshot("mark")
                before = {}
                channel.publish("heap", StreamEvent("progress", {"t": time.monotonic_ns(), "i": 1}))
                client.next(timeout=120)
                time.sleep(0.5)
                after = snapshot("count")
            elif args.lines:
                after, before = snapshot(trace="diff"), {}
            else:
                after = snapshot()
            rss1 = server.rss_bytes()
        finally:
            if client is not None:
                client.stop()
            stop([server.process] if server.process is not None else [])
    n = args.followers
    rows = []
    for name, (count, size) in after.items():
        was = before.get(name, [0, 0])
        rows.append((name, (count - was[0]) / n, (size - was[1]) / n))
    rows.sort(key=lambda row: (-row[2], -row[1]))
    objects = sum(r[1] for r in rows)
    size = sum(r[2] for r in rows)
    idle = sum(count for count, _ in before.values())
    if args.lines:
        print(
            f"{n:,} followers (traced): {size / 1024:.1f} KiB per follower in {objects:.1f} "
            "allocations, by the line that made them:"
        )
        rows = [(_short(name), count, nbytes) for name, count, nbytes in rows]
    else:
        print(f"before the followers: {idle:,} tracked objects in the server process")
        print(
            f"{n:,} followers: RSS {(rss1 - rss0) / n / 1024:.1f} KiB per follower; tracked "
            f"objects {objects:.1f} per follower, {size / 1024:.1f} KiB (sys.getsizeof)"
        )
    for name, count, nbytes in rows[: args.top]:
        print(f"  {count:6.2f} x {name:70} {nbytes:8.0f} B")


def _short(line: str) -> str:
    """A traced ``file:line`` from the package or the library it is in, not the machine."""
    for marker in ("site-packages/", "/lib/python3.", "streaming_mw/"):
        at = line.find(marker)
        if at >= 0:
            if marker == "/lib/python3.":
                return line[at + 5 :]  # python3.x/...
            return line[at:] if marker == "streaming_mw/" else line[at + len(marker) :]
    return line


if __name__ == "__main__":
    main()
