"""Direct streaming throughput: small SSE events served by a real uvicorn server.

Cases, each its own uvicorn process (``bench/direct_apps.py``): raw Starlette
`StreamingResponse` yielding constant pre-framed bytes, the same encoding each event's dict with
orjson and framing it by hand (the fair baseline the targets are against), FastAPI's native
`EventSourceResponse`, sse-starlette, ours (`StreamingMiddleware` + ``stream_lease`` +
`encode_stream_event`, memory mode), the same with ``coalesce_writes=False`` (one write per
chunk, as the raw routes do), and ours through `resumable_response` with the history in
memory and in a local redis-server. A separate client process opens K concurrent HTTP/1.1
streams over raw sockets, reads each to EOF and counts the events. Two scenarios: 1 stream x
50,000 events and 100 streams x 2,000 events. Cases are interleaved in every repetition.

Then the time to first token of raw, ours and ours through `resumable_response`, in memory and
in Redis mode (``TTFT_CASES``).

Run: python -m bench.bench_direct [--repeat 3] [--single-events 50000] [--streams 100]
[--events 2000] [--ttft-requests 100] [--skip CASE,...] [--output bench/results/direct.json]

Prints a table per scenario of events/s (min / median / max over repetitions) and the ratio of
medians to the fair baseline measured in the same run, and the time-to-first-token table;
writes the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from typing import TYPE_CHECKING

from ._harness import (
    Result,
    Table,
    Uvicorn,
    common_args,
    redis_server,
    run_client,
    stop,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

APPS = {
    "raw": "raw",
    "raw_json": "raw_json",
    "fastapi": "fastapi",
    "sse_starlette": "sse_starlette_app",
    "ours": "ours",
    "ours_event": "ours_event",
    "ours_unbatched": "ours_unbatched",
    "ours_resumable": "ours_resumable",
    "ours_resumable_redis": "ours_resumable",
    "ours_traced": "ours_traced",
}
LABELS = {
    "raw": "raw Starlette StreamingResponse, constant bytes",
    "raw_json": "raw Starlette StreamingResponse, orjson per event (fair baseline)",
    "fastapi": "FastAPI EventSourceResponse",
    "sse_starlette": "sse-starlette EventSourceResponse",
    "ours": "streaming_mw (middleware + stream_lease + encode)",
    "ours_event": "streaming_mw, StreamEvent + encode_stream_event",
    "ours_unbatched": "streaming_mw, coalesce_writes=False (one write per event)",
    "ours_resumable": "streaming_mw, resumable_response, memory history",
    "ours_resumable_redis": "streaming_mw, resumable_response, Redis history",
    "ours_traced": "streaming_mw, OpenTelemetry SDK recording spans",
}
DIRECT_CASES = (
    "raw",
    "raw_json",
    "fastapi",
    "sse_starlette",
    "ours",
    "ours_event",
    "ours_unbatched",
    "ours_resumable",
    "ours_resumable_redis",
)
REDIS_CASES = frozenset({"ours_resumable_redis"})
BASELINE = "raw"
FAIR_BASELINE = "raw_json"
"""The same work per event as ours minus streaming_mw: the direct targets are against it."""
TARGET = 0.95
EVENT_TARGET = 0.85
RESUMABLE_TARGET = 0.8
MARKER = b"data: "
MODULE = "bench.bench_direct"
STARTUP_TIMEOUT = 180.0


# client (runs in its own process) ------------------------------------------------------------


async def read_stream(port: int, events: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /s?n={events} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    count, tail = 0, b""
    while chunk := await reader.read(65536):
        buf = tail + chunk
        count += buf.count(MARKER)
        tail = buf[-(len(MARKER) - 1) :]  # too short to hold a whole marker already counted
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return count


async def client(port: int, streams: int, events: int) -> dict[str, float]:
    start = time.perf_counter()
    counts = await asyncio.gather(*(read_stream(port, events) for _ in range(streams)))
    seconds = time.perf_counter() - start
    return {"events": sum(counts), "seconds": seconds}


# time to first token (client side, its own process) ------------------------------------------

FIRST_TOKEN = b"event: token\ndata: "
TTFT_EVENTS = 10
"""Events per stream of the time-to-first-token runs: the stream is short, its start is timed."""


async def first_token_ms(port: int) -> float:
    """Milliseconds from sending the request (on a new connection) to the first whole
    ``token`` event parsed, then read the stream to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /s?n={TTFT_EVENTS} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    start = time.perf_counter()
    writer.write(request.encode())
    buf, elapsed = b"", None
    while chunk := await reader.read(65536):
        if elapsed is None:
            buf += chunk
            at = buf.find(FIRST_TOKEN)
            if at >= 0 and buf.find(b"\n\n", at) >= 0:
                elapsed = (time.perf_counter() - start) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if elapsed is None:
        raise RuntimeError("no token event in the response")
    return elapsed


TTFT_PAUSE = 0.01
"""Seconds between two time-to-first-token requests: each meets a server done with the last
stream (back to back, the last stream's clean-up would be timed as the next one's start)."""


async def ttft_client(port: int, requests: int) -> dict[str, float]:
    """The median time to first token over ``requests`` requests, one after another, and the
    same over as many requests sent back to back (each as soon as the last stream ended)."""
    samples = []
    for _ in range(requests):
        samples.append(await first_token_ms(port))
        await asyncio.sleep(TTFT_PAUSE)
    back_to_back = [await first_token_ms(port) for _ in range(requests)]
    return {
        "median_ms": statistics.median(samples),
        "back_to_back_ms": statistics.median(back_to_back),
        "requests": requests,
    }


# the run ---------------------------------------------------------------------------------------

DESCRIPTION = """\
How fast small events leave a real server on the direct-streaming path, against the plain
Starlette response it is built on. Each case is its own uvicorn process
(`bench/direct_apps.py`, memory mode, `--log-level warning --no-access-log`, uvloop and
httptools) whose route yields N `token` events as fast as it can (no sleeps), each framed as
`id: <i>` / `event: token` / `data: {"token":"x"}`:

- **raw, constant bytes**: Starlette `StreamingResponse` yielding pre-framed bytes whose JSON is
  a constant string: no encoding work at all per event;
- **raw, orjson per event**: the same route encoding the event's dict with `orjson.dumps` and
  framing it by hand (the `id:` and `event:` lines from an f-string, then `data: `, the JSON
  and a blank line): the same work per event as the routes below minus streaming_mw itself.
  **This is the baseline** of the ratios and the targets, the fair comparison; the constant
  bytes row shows how much of the cost is JSON encoding alone;
- **FastAPI**: a route with `response_class=EventSourceResponse` yielding `ServerSentEvent`;
- **sse-starlette**: `sse_starlette.EventSourceResponse` yielding its `ServerSentEvent`
  (data passed as a pre-serialised string, ping disabled for the run);
- **streaming_mw**: `StreamingMiddleware` + `async with stream_lease(user): return
  StreamingResponse(...)` yielding `encode(data={"token": "x"}, event="token", id=str(i))`;
- **streaming_mw, StreamEvent**: the same route yielding
  `encode_stream_event(StreamEvent("token", {"token": "x"}, id=str(i)))`, the value object
  emitters and channels carry (it adds a timestamp and validates at construction);
- **streaming_mw, coalesce_writes=False**: the first streaming_mw route with the middleware
  handing every chunk to the server on its own, as the raw routes do. By default
  (`coalesce_writes=True`) the chunks a route sends in one turn of the event loop, after its
  first, reach the server as one write: these routes never wait between events, so most of a
  stream leaves in writes of up to 64 KiB;
- **streaming_mw, resumable_response** (memory history, and Redis history on a local
  `redis-server`): the same route returning `resumable_response(tokens, user_id=...)` whose
  generator yields `"x"` (sent as `token {"token": "x"}` with a `<epoch>-<seq>` id); every
  event is also recorded in the stream's history, in batches, while the client reads. Its
  frames include the first `stream` event and the final `complete`, counted as events.

A separate client process opens the streams over raw sockets (HTTP/1.1), reads each to EOF,
checks that every event arrived and reports events over wall time. Two scenarios: one stream,
and 100 concurrent streams. The servers run side by side; after a warm-up, every repetition
runs every case in turn, so drift hits every case alike. The client shares the two cores with
the server (and, for the Redis cases, with `redis-server`).

**Time to first token**: the same apps serve 10-event streams whose first token is ready at
once; a client process sends one request at a time on a new connection and times it from the
request's write to the first whole `token` event parsed (the resumable stream's first `stream`
event is skipped). Each round takes the median of its requests; the rounds are interleaved
across cases. Two tables: requests sent back to back, each as soon as the last stream ended,
and requests 10 ms apart. Back to back, the last stream's clean-up is timed as part of the next
one's start: a resumable stream ends with work behind its last byte (its final history batch,
and on Redis the heartbeat's removal, one round trip). 10 ms apart, each request meets a server
done with the last one; the absolute times are higher there, as every process wakes from idle.
It compares resumable and not resumable on the same backend: in memory, and in
Redis mode, where the route's `stream_lease` is a Redis round trip in both."""


@contextlib.contextmanager
def started(*servers: Uvicorn) -> Iterator[None]:
    """`uvicorn_servers` with a longer wait for each to listen: seven servers importing at once
    on a loaded two-core machine can take more than its 30 s."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait(timeout=STARTUP_TIMEOUT)
        yield
    finally:
        stop([s.process for s in servers if s.process is not None])


def scenarios(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    return {
        f"1 stream x {args.single_events:,} events": (1, args.single_events),
        f"{args.streams} streams x {args.events:,} events": (args.streams, args.events),
    }


def measure(
    result: Result,
    cases: Sequence[str],
    args: argparse.Namespace,
    baseline: str = BASELINE,
    after: Callable[[dict[str, Uvicorn]], None] | None = None,
    redis_url: str | None = None,
) -> list[Table]:
    """Run every case of ``cases`` in every scenario, ``args.repeat`` times, interleaved;
    ``after`` sees the servers once the runs are done, before they stop. Cases of
    ``REDIS_CASES`` run with ``STREAMING_MODE=redis`` on ``redis_url``."""
    plan = scenarios(args)
    rates: dict[str, dict[str, list[float]]] = {name: {c: [] for c in cases} for name in plan}
    redis_env = {"STREAMING_MODE": "redis", "REDIS_URL": redis_url or ""}
    servers = {
        case: Uvicorn(
            f"bench.direct_apps:{APPS[case]}", env=redis_env if case in REDIS_CASES else None
        )
        for case in cases
    }
    with started(*servers.values()):
        for server in servers.values():  # warm-up: imports, first-request paths
            run_client(MODULE, server.port, 10, 100, timeout=args.timeout)
        for _ in range(args.repeat):
            for name, (streams, events) in plan.items():
                for case, server in servers.items():
                    out = run_client(MODULE, server.port, streams, events, timeout=args.timeout)
                    if out["events"] != streams * events:
                        raise RuntimeError(
                            f"{case}: {out['events']} events, {streams * events} sent"
                        )
                    rates[name][case].append(out["events"] / out["seconds"])
        if after is not None:
            after(servers)
    tables = []
    for name, by_case in rates.items():
        table = result.table(name, "events/s", baseline=baseline)
        for case, samples in by_case.items():
            table.add(case, LABELS[case], samples)
        tables.append(table)
    return tables


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    common_args(parser)
    parser.add_argument("--single-events", type=int, default=50_000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--events", type=int, default=2_000, help="events per concurrent stream")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per client run")
    parser.add_argument("--client", nargs=3, type=int, metavar=("PORT", "STREAMS", "EVENTS"))
    parser.add_argument("--skip", default="", help="comma-separated cases to leave out")
    parser.add_argument("--ttft-requests", type=int, default=100, help="requests per TTFT run")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.single_events, args.streams, args.events = 1, 2_000, 10, 200
        args.ttft_requests = 10
    return args


def fair_ratio(table: Table, case: str) -> tuple[float, str]:
    """``case`` against the fair baseline: the ratio of medians, and min / median / max of the
    ratios within each repetition (the cases of one repetition ran back to back)."""
    ours, base = table.row(case), table.row(FAIR_BASELINE)
    runs = sorted(o / b for o, b in zip(ours["samples"], base["samples"], strict=True))
    low, mid, high = runs[0], statistics.median(runs), runs[-1]
    spread = f"per repetition min {low:.2f} / median {mid:.2f} / max {high:.2f}"
    return ours["median"] / base["median"], spread


def measure_ttft(result: Result, args: argparse.Namespace, redis_url: str) -> list[Table]:
    """Time to first token of ``TTFT_CASES``, ``args.repeat`` rounds of
    ``args.ttft_requests`` requests each, cases interleaved; one sample per round (its
    median): requests back to back, and requests ``TTFT_PAUSE`` apart."""
    redis_env = {"STREAMING_MODE": "redis", "REDIS_URL": redis_url}
    servers = {
        case: Uvicorn(f"bench.direct_apps:{app}", env=redis_env if redis else None)
        for case, (app, redis, _) in TTFT_CASES.items()
    }
    samples: dict[str, list[float]] = {case: [] for case in servers}
    back_to_back: dict[str, list[float]] = {case: [] for case in servers}
    with started(*servers.values()):
        for server in servers.values():  # warm-up
            run_client(MODULE, server.port, 0, 20, timeout=args.timeout)
        for _ in range(args.repeat):
            for case, server in servers.items():  # 0 streams: the time-to-first-token client
                out = run_client(MODULE, server.port, 0, args.ttft_requests, timeout=args.timeout)
                samples[case].append(out["median_ms"])
                back_to_back[case].append(out["back_to_back_ms"])
    table = result.table(
        f"Time to first token ({TTFT_EVENTS}-event streams, requests back to back: median of "
        f"{args.ttft_requests} per round)",
        "ms",
        higher_is_better=False,
        baseline=BASELINE,
    )
    paused = result.table(
        f"Time to first token, requests {TTFT_PAUSE * 1000:.0f} ms apart (median of "
        f"{args.ttft_requests} per round)",
        "ms",
        higher_is_better=False,
        baseline=BASELINE,
    )
    for case, (_, _, label) in TTFT_CASES.items():
        table.add(case, label, back_to_back[case])
        paused.add(case, label, samples[case])
    return [table, paused]


TTFT_CASES = {
    "raw": ("raw", False, LABELS["raw"]),
    "ours": ("ours", False, "streaming_mw, not resumable (memory)"),
    "ours_resumable": ("ours_resumable", False, "streaming_mw, resumable (memory history)"),
    "ours_redis": ("ours", True, "streaming_mw, not resumable (Redis: lease on Redis)"),
    "ours_resumable_redis": ("ours_resumable", True, "streaming_mw, resumable (Redis history)"),
}
"""case: (app of `bench.direct_apps`, served in Redis mode, label). The first token is ready
at once in every app; resumable and not resumable side by side, in memory and on Redis."""


def resumable_targets(
    result: Result, tables: Sequence[Table], ttft: Sequence[Table], skipped: set[str]
) -> None:
    """Throughput of the resumable cases beside the plain direct one, and their time to first
    token beside the same route without resumable (memory, and Redis)."""
    for table in tables:
        base = table.row(BASELINE)["median"]
        for case, where in (("ours_resumable", "memory"), ("ours_resumable_redis", "Redis")):
            if case in skipped:
                continue
            ratio = table.row(case)["median"] / base
            plain = table.row("ours")["median"] / base
            name = f"resumable ({where}) vs raw StreamingResponse, {table.title}"
            value = f"{ratio:.2f}x (not resumable: {plain:.2f}x)"
            result.target(name, f">= {RESUMABLE_TARGET}x", value, ratio >= RESUMABLE_TARGET)
    for timing, how in zip(
        ttft, ("back to back", f"{TTFT_PAUSE * 1000:.0f} ms apart"), strict=True
    ):
        for on, off, where in (
            ("ours_resumable", "ours", "memory"),
            ("ours_resumable_redis", "ours_redis", "Redis"),
        ):
            with_it, without = timing.row(on), timing.row(off)
            delta = with_it["median"] - without["median"]
            name = f"time to first token, resumable vs not ({where}, requests {how})"
            value = (
                f"{with_it['median']:.2f} ms vs {without['median']:.2f} ms ({delta:+.2f} ms; "
                f"rounds {with_it['min']:.2f}-{with_it['max']:.2f} vs "
                f"{without['min']:.2f}-{without['max']:.2f} ms)"
            )
            # within noise: the slowest round without resumable is as slow as the fastest with
            met = with_it["min"] <= without["max"]
            result.target(name, "unchanged within noise (rounds overlap)", value, met)


def main() -> None:
    args = parse("Direct streaming throughput.")
    if args.client:
        port, streams, events = args.client
        run = client(port, streams, events) if streams else ttft_client(port, events)
        print(json.dumps(asyncio.run(run)))
        return
    result = Result("direct", "Direct streaming throughput", DESCRIPTION)
    skipped = {case for case in args.skip.split(",") if case}
    if skipped & {BASELINE, FAIR_BASELINE, "ours", "ours_event"}:
        raise SystemExit("--skip: the baselines, ours and ours_event are always measured")
    cases = [case for case in DIRECT_CASES if case not in skipped]
    with redis_server() as url:
        tables = measure(result, cases, args, baseline=FAIR_BASELINE, redis_url=url)
        ttft = measure_ttft(result, args, url)
    for table in tables:
        base = table.row(BASELINE)["median"]
        for case, wanted, what in (
            ("ours", TARGET, "ours"),
            ("ours_event", EVENT_TARGET, "ours, StreamEvent"),
        ):
            ratio, spread = fair_ratio(table, case)
            name = f"{what} vs raw StreamingResponse with orjson per event, {table.title}"
            result.target(name, f">= {wanted}x", f"{ratio:.2f}x ({spread})", ratio >= wanted)
            constant = table.row(case)["median"] / base
            result.notes.append(
                f"{table.title}: {what} is at {constant:.2f}x of raw StreamingResponse yielding "
                f"constant bytes (ratio of medians; the targets are against the fair baseline)."
            )
    resumable_targets(result, tables, ttft, skipped)
    result.save(args.output)


if __name__ == "__main__":
    main()
