"""Direct streaming throughput: small SSE events served by a real uvicorn server.

Cases, each its own uvicorn process (``bench/direct_apps.py``): raw Starlette
`StreamingResponse` yielding constant pre-framed bytes, the same encoding each event's dict with
orjson and framing it by hand (the fair baseline the targets are against), FastAPI's native
`EventSourceResponse`, sse-starlette, ours (`StreamingMiddleware` + ``stream_lease`` +
`encode_stream_event`, memory mode), and ours through `resumable_response` with the history in
memory and in a local redis-server. A separate client process opens K concurrent HTTP/1.1
streams over raw sockets, reads each to EOF and counts the events. Two scenarios: 1 stream x
50,000 events and 100 streams x 2,000 events. Cases are interleaved in every repetition.

Run: python -m bench.bench_direct [--repeat 3] [--single-events 50000] [--streams 100]
[--events 2000] [--skip CASE,...] [--output bench/results/direct.json]

Prints a table per scenario of events/s (min / median / max over repetitions) and the ratio of
medians to the fair baseline measured in the same run; writes the results as JSON.
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
    uvicorn_servers,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

APPS = {
    "raw": "raw",
    "raw_json": "raw_json",
    "fastapi": "fastapi",
    "sse_starlette": "sse_starlette_app",
    "ours": "ours",
    "ours_event": "ours_event",
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
- **streaming_mw, resumable_response** (memory history, and Redis history on a local
  `redis-server`): the same route returning `resumable_response(tokens, user_id=...)` whose
  generator yields `"x"` (sent as `token {"token": "x"}` with a `<epoch>-<seq>` id); every
  event is also recorded in the stream's history, in batches, while the client reads. Its
  frames include the first `stream` event and the final `complete`, counted as events.

A separate client process opens the streams over raw sockets (HTTP/1.1), reads each to EOF,
checks that every event arrived and reports events over wall time. Two scenarios: one stream,
and 100 concurrent streams. The servers run side by side; after a warm-up, every repetition
runs every case in turn, so drift hits every case alike. The client shares the two cores with
the server."""


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
    with uvicorn_servers(*servers.values()):
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
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.single_events, args.streams, args.events = 1, 2_000, 10, 200
    return args


def fair_ratio(table: Table, case: str) -> tuple[float, str]:
    """``case`` against the fair baseline: the ratio of medians, and min / median / max of the
    ratios within each repetition (the cases of one repetition ran back to back)."""
    ours, base = table.row(case), table.row(FAIR_BASELINE)
    runs = sorted(o / b for o, b in zip(ours["samples"], base["samples"], strict=True))
    low, mid, high = runs[0], statistics.median(runs), runs[-1]
    spread = f"per repetition min {low:.2f} / median {mid:.2f} / max {high:.2f}"
    return ours["median"] / base["median"], spread


def main() -> None:
    args = parse("Direct streaming throughput.")
    if args.client:
        print(json.dumps(asyncio.run(client(*args.client))))
        return
    result = Result("direct", "Direct streaming throughput", DESCRIPTION)
    skipped = {case for case in args.skip.split(",") if case}
    if skipped & {BASELINE, FAIR_BASELINE, "ours", "ours_event"}:
        raise SystemExit("--skip: the baselines, ours and ours_event are always measured")
    cases = [case for case in DIRECT_CASES if case not in skipped]
    with redis_server() as url:
        tables = measure(result, cases, args, baseline=FAIR_BASELINE, redis_url=url)
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
        for case, where in (("ours_resumable", "memory"), ("ours_resumable_redis", "Redis")):
            if case in skipped:
                continue
            ratio = table.row(case)["median"] / base
            name = f"resumable ({where}) vs raw StreamingResponse, {table.title}"
            result.target(
                name, f">= {RESUMABLE_TARGET}x", f"{ratio:.2f}x", ratio >= RESUMABLE_TARGET
            )
    result.save(args.output)


if __name__ == "__main__":
    main()
