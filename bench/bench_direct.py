"""Direct streaming throughput: small SSE events served by a real uvicorn server.

Four cases, each its own uvicorn process (``bench/direct_apps.py``): raw Starlette
`StreamingResponse` yielding pre-framed bytes (the baseline), FastAPI's native
`EventSourceResponse`, sse-starlette, and ours (`StreamingMiddleware` + ``stream_lease`` +
`encode_stream_event`, memory mode). A separate client process opens K concurrent HTTP/1.1
streams over raw sockets, reads each to EOF and counts the events. Two scenarios: 1 stream x
50,000 events and 100 streams x 2,000 events. Cases are interleaved in every repetition.

Run: python -m bench.bench_direct [--repeat 3] [--single-events 50000] [--streams 100]
[--events 2000] [--output bench/results/direct.json]

Prints a table per scenario of events/s (min / median / max over repetitions) and the ratio of
medians to raw `StreamingResponse` measured in the same run; writes the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

APPS = {
    "raw": "raw",
    "fastapi": "fastapi",
    "sse_starlette": "sse_starlette_app",
    "ours": "ours",
}
LABELS = {
    "raw": "raw Starlette StreamingResponse",
    "fastapi": "FastAPI EventSourceResponse",
    "sse_starlette": "sse-starlette EventSourceResponse",
    "ours": "streaming_mw (middleware + stream_lease)",
}
BASELINE = "raw"
TARGET = 0.9
MARKER = b"data: "
ROOT = Path(__file__).resolve().parent.parent


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


def run_client(port: int, streams: int, events: int, timeout: float) -> tuple[int, float]:
    """Load the server from a separate process; returns (events received, wall seconds)."""
    command = [sys.executable, "-m", "bench.bench_direct", "--client", str(port)]
    out = subprocess.run(
        [*command, str(streams), str(events)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result = json.loads(out.stdout)
    return int(result["events"]), float(result["seconds"])


# servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(app: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["STREAMING_MODE"] = "memory"
    command = [sys.executable, "-m", "uvicorn", f"bench.direct_apps:{app}", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def stop_servers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# report ---------------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    versions = {
        name: importlib.metadata.version(name)
        for name in ("uvicorn", "fastapi", "starlette", "sse-starlette", "uvloop", "httptools")
    }
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        **versions,
    }


Summary = dict[str, dict[str, float]]


def table(name: str, rates: dict[str, list[float]]) -> tuple[list[str], Summary]:
    base = statistics.median(rates[BASELINE])
    lines = [f"{name}:", "", "| case | events/s min / median / max | vs raw (median) |"]
    lines.append("|---|---|---|")
    summary: Summary = {}
    for case, samples in rates.items():
        low, mid, high = min(samples), statistics.median(samples), max(samples)
        summary[case] = {"min": low, "median": mid, "max": high, "ratio_to_raw": mid / base}
        lines.append(
            f"| {LABELS[case]} | {low:,.0f} / {mid:,.0f} / {high:,.0f} | {mid / base:.2f}x |"
        )
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--single-events", type=int, default=50_000)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--events", type=int, default=2_000, help="events per concurrent stream")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per client run")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "direct.json"))
    parser.add_argument("--client", nargs=3, type=int, metavar=("PORT", "STREAMS", "EVENTS"))
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client(*args.client))))
        return

    scenarios = {
        f"1 stream x {args.single_events:,} events": (1, args.single_events),
        f"{args.streams} streams x {args.events:,} events": (args.streams, args.events),
    }
    rates = {name: {case: [] for case in APPS} for name in scenarios}
    processes: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    started = time.perf_counter()
    try:
        for case, app in APPS.items():
            ports[case] = free_port()
            processes.append(start_server(app, ports[case]))
        for process, port in zip(processes, ports.values(), strict=True):
            wait_ready(process, port)
        for port in ports.values():  # warm-up: imports, first-request paths
            run_client(port, args.streams, 100, args.timeout)
        for _ in range(args.repeat):
            for name, (streams, events) in scenarios.items():
                for case, port in ports.items():  # interleaved, so drift hits every case alike
                    received, seconds = run_client(port, streams, events, args.timeout)
                    if received != streams * events:
                        raise RuntimeError(f"{case}: {received} events, {streams * events} sent")
                    rates[name][case].append(received / seconds)
    finally:
        stop_servers(processes)

    info = machine()
    print(
        f"machine: {info['cores']} cores, {info['python']}, uvicorn {info['uvicorn']}, "
        f"fastapi {info['fastapi']}, starlette {info['starlette']}, "
        f"sse-starlette {info['sse-starlette']}; {args.repeat} repetitions, "
        f"{time.perf_counter() - started:.0f} s"
    )
    results: dict[str, object] = {}
    for name, scenario_rates in rates.items():
        lines, summary = table(name, scenario_rates)
        print("\n".join(["", *lines]))
        streams, events = scenarios[name]
        results[name] = {
            "streams": streams,
            "events_per_stream": events,
            "events_per_second": scenario_rates,
            "summary": summary,
        }
    print()
    for name in scenarios:
        ratio = results[name]["summary"]["ours"]["ratio_to_raw"]  # type: ignore[index]
        verdict = "met" if ratio >= TARGET else "missed"
        print(f"{name}: ours >= {TARGET} x raw: {verdict} ({ratio:.2f}x)")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "repeat": args.repeat, "target": TARGET, "scenarios": results}
    output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
