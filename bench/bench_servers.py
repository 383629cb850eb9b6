"""One direct stream under every common ASGI server: time to first byte and events/s.

The same app (``bench.direct_apps:ours``: `StreamingMiddleware` + ``stream_lease`` +
`encode`, memory mode) served by uvicorn (the baseline), Hypercorn, Granian and gunicorn with
one uvicorn worker, each its own process with one worker. A separate client process measures,
over raw HTTP/1.1 sockets: the time from sending a request of a one-event stream to its first
response byte (``--ttfb`` sequential requests, the median of each repetition), and the events/s
of one stream of ``--events`` events read to EOF.

Run: python -m bench.bench_servers [--repeat 3] [--events 50000] [--ttfb 200]
[--output bench/results/servers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ._harness import (
    ROOT,
    Result,
    common_args,
    free_port,
    raise_nofile,
    run_client,
    server_env,
    stop,
    wait_port,
)
from .bench_direct import read_stream

APP = "bench.direct_apps:ours"
MODULE = "bench.bench_servers"
BASELINE = "uvicorn"
LABELS = {
    "uvicorn": "uvicorn (httptools, uvloop)",
    "hypercorn": "Hypercorn, HTTP/1.1",
    "granian": "Granian, ASGI interface",
    "gunicorn": "gunicorn + uvicorn_worker.UvicornWorker",
}


@dataclass
class Server:
    """One server process serving `APP` on a free port, one worker."""

    kind: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        py, host, port = sys.executable, "127.0.0.1", str(self.port)
        bind = f"{host}:{port}"
        return {
            "uvicorn": [py, "-m", "uvicorn", APP, "--port", port, "--log-level", "warning",
                        "--no-access-log"],
            "hypercorn": [py, "-m", "hypercorn", APP, "--bind", bind, "--workers", "1"],
            "granian": [py, "-m", "granian", "--interface", "asgi", "--host", host, "--port",
                        port, "--workers", "1", "--log-level", "warning", APP],
            "gunicorn": [py, "-m", "gunicorn", APP, "--bind", bind, "--workers", "1",
                         "--worker-class", "uvicorn_worker.UvicornWorker", "--log-level",
                         "warning"],
        }[self.kind]  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=server_env(), preexec_fn=raise_nofile
        )
        wait_port(self.port, self.process)


# client (runs in its own process) ------------------------------------------------------------


async def first_byte(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /s?n=1 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    start = time.perf_counter()
    writer.write(request)
    await reader.read(1)
    seconds = time.perf_counter() - start
    while await reader.read(65536):
        pass
    writer.close()
    return seconds


async def client(port: int, mode: int, count: int) -> dict[str, float]:
    if mode == 0:  # time to first byte, ``count`` requests one after the other
        samples = [await first_byte(port) for _ in range(count)]
        return {"ttfb_ms": 1000 * statistics.median(samples)}
    start = time.perf_counter()
    events = await read_stream(port, count)
    return {"events": events, "seconds": time.perf_counter() - start}


# the run ---------------------------------------------------------------------------------------

DESCRIPTION = """\
What the server adds to one direct stream. The same app (`bench/direct_apps.py`, `ours`:
`StreamingMiddleware` + `stream_lease` + `encode`, memory mode) is served by uvicorn (the
baseline), Hypercorn, Granian and gunicorn with one `uvicorn_worker.UvicornWorker`, each its
own process with one worker, side by side. A separate client process measures, over raw
HTTP/1.1 sockets: the time from sending the request of a one-event stream to the first byte of
the answer (the median of sequential requests), and the events/s of one stream read to EOF. The
servers run side by side; every repetition runs every case in turn."""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time to first byte and events/s per server.")
    common_args(parser)
    parser.add_argument("--events", type=int, default=50_000, help="events of the one stream")
    parser.add_argument("--ttfb", type=int, default=200, help="requests per TTFB sample")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per client run")
    parser.add_argument("--client", nargs=3, type=int, metavar=("PORT", "MODE", "COUNT"))
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.events, args.ttfb = 1, 2_000, 20
    return args


def main() -> None:
    args = parse()
    if args.client:
        print(json.dumps(asyncio.run(client(*args.client))))
        return
    result = Result("servers", "One direct stream under each ASGI server", DESCRIPTION)
    servers = [Server(kind) for kind in LABELS]
    ttfb: dict[str, list[float]] = {s.kind: [] for s in servers}
    rate: dict[str, list[float]] = {s.kind: [] for s in servers}
    try:
        for server in servers:
            server.start()
        for server in servers:  # warm-up
            run_client(MODULE, server.port, 1, 100, timeout=args.timeout)
        for _ in range(args.repeat):
            for server in servers:
                out = run_client(MODULE, server.port, 0, args.ttfb, timeout=args.timeout)
                ttfb[server.kind].append(out["ttfb_ms"])
                out = run_client(MODULE, server.port, 1, args.events, timeout=args.timeout)
                if out["events"] != args.events:
                    raise RuntimeError(f"{server.kind}: {out['events']} of {args.events} events")
                rate[server.kind].append(out["events"] / out["seconds"])
    finally:
        stop([s.process for s in servers if s.process is not None])
    table = result.table("time to first byte", "ms", baseline=BASELINE, higher_is_better=False)
    for kind, samples in ttfb.items():
        table.add(kind, LABELS[kind], samples)
    table = result.table(f"1 stream x {args.events:,} events", "events/s", baseline=BASELINE)
    for kind, samples in rate.items():
        table.add(kind, LABELS[kind], samples)
    result.notes.append(
        "gunicorn's `UvicornWorker` runs the same uvicorn stack (httptools, uvloop) as the "
        "baseline: a difference between the two is the spread of a shared machine, not the "
        "server. Read the min / max beside each median."
    )
    result.save(args.output)


if __name__ == "__main__":
    main()
