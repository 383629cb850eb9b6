"""What every benchmark in `bench/` shares: servers, client processes, statistics, results.

Every benchmark runs real processes: uvicorn servers (``start_uvicorn``), a real
``redis-server`` (``redis_server``) and a load generator in its own process (``run_client``).
Its results go to ``bench/results/<name>.json`` through `Result`, in one shape that
``bench.report`` turns into ``docs/benchmarks.md`` and its plots:

``{"benchmark", "title", "description", "command", "machine", "started", "seconds",
"tables": [{"title", "unit", "higher_is_better", "baseline", "rows": [{"case", "label",
"samples", "min", "median", "max", "ratio", "x"?, "series"?}]}], "targets": [{"name",
"target", "value", "met"}], "notes": [str]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import queue
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = (
    "streaming-mw",
    "uvicorn",
    "uvloop",
    "httptools",
    "starlette",
    "fastapi",
    "sse-starlette",
    "redis",
    "hiredis",
    "orjson",
    "opentelemetry-sdk",
)


# processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> None:
    """Lift this process's open-file limit to its hard limit (10,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server process: memory mode unless ``extra`` says otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "STREAMING_MODE")}
    env["STREAMING_MODE"] = "memory"
    env.update(extra or {})
    return env


@dataclass
class Uvicorn:
    """A uvicorn server process serving ``app`` (``module:attribute``) on a free port."""

    app: str
    env: Mapping[str, str] | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Uvicorn:
        command = [sys.executable, "-m", "uvicorn", self.app, "--port", str(self.port)]
        command += ["--log-level", "warning", "--no-access-log", "--backlog", "4096"]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=server_env(self.env), preexec_fn=raise_nofile
        )
        return self

    def wait(self, timeout: float = 120.0) -> Uvicorn:
        wait_port(self.port, self.process, timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        """The server's resident set size, from ``/proc`` (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")


@contextlib.contextmanager
def uvicorn_servers(*servers: Uvicorn) -> Iterator[tuple[Uvicorn, ...]]:
    """Start all of ``servers`` side by side, wait until each listens, stop them after."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait()
        yield servers
    finally:
        stop([s.process for s in servers if s.process is not None])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH (scripts/test installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--maxclients", "20000", "--dir", workdir]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=raise_nofile
        )
        try:
            wait_port(port, process)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop([process])


def run_client(module: str, *args: object, timeout: float = 300.0) -> Any:
    """Run ``python -m <module> --client <args...>`` in its own process; its JSON stdout."""
    command = [sys.executable, "-m", module, "--client", *(str(a) for a in args)]
    out = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=raise_nofile,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {module} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout)


def client_process(module: str, *args: object, role: str = "--client") -> subprocess.Popen[str]:
    """Start ``python -m <module> <role> <args...>`` without waiting (stdin/stdout piped)."""
    command = [sys.executable, "-m", module, role, *(str(a) for a in args)]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
    )


class JsonLinesChild:
    """A child process (`client_process`) speaking JSON lines, its output read by a thread so
    waits can time out; ``say`` writes one command line to it."""

    def __init__(self, process: subprocess.Popen[str], name: str = "client") -> None:
        self.process = process
        self.name = name
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def next(self, timeout: float) -> dict[str, Any]:
        """The child's next JSON line; RuntimeError if it says nothing in time or exits."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name} said nothing for {timeout:.0f}s") from None
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.process.wait()}) before answering")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def say(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: ``--repeat``, ``--quick``, ``--output``."""
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (at least 3)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 repetition: a smoke run for tests"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")


# in-process helpers --------------------------------------------------------------------------


async def paced(
    streams: Sequence[str],
    rate: float,
    count: int,
    publish: Callable[[str, int], Awaitable[object]],
) -> dict[str, float]:
    """``count`` events per stream, round-robin, ``rate`` per second in all; returns the wall
    seconds and how far (ms) publishing ever fell behind that schedule."""
    interval = 1.0 / rate
    start = due = time.monotonic()
    behind = 0.0
    for i in range(count):
        for stream_id in streams:
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = max(behind, -delay)
            await publish(stream_id, i)
    return {"seconds": time.monotonic() - start, "max_behind_ms": behind * 1000}


async def serve_asgi(
    app: Any,
    path: str = "/s",
    query: bytes = b"",
    on_send: Callable[[Any], None] | None = None,
) -> float:
    """Seconds to serve one ``GET path?query`` through the ASGI ``app`` over a raw channel (no
    server, no socket): the request, then a ``send`` that only waits for the body's end (and
    hands each message to ``on_send`` first, if given)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    done = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if on_send is not None:
            on_send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    started = time.perf_counter()
    await app(scope, receive, send)
    return time.perf_counter() - started


# statistics and results -----------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def machine() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    redis_version = "not found"
    binary = shutil.which("redis-server")
    if binary is not None:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        redis_version = next(
            (p.split("=", 1)[1] for p in out.stdout.split() if p.startswith("v=")), out.stdout
        )
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "system": platform.system(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis-server": redis_version,
        "packages": versions,
    }


@dataclass
class Table:
    """One table of a benchmark: rows of repeated samples of one measure, one unit."""

    title: str
    unit: str
    higher_is_better: bool = True
    baseline: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        case: str,
        label: str,
        samples: Sequence[float],
        *,
        x: float | None = None,
        series: str | None = None,
    ) -> dict[str, Any]:
        if not samples:
            raise ValueError(f"{self.title}: no samples for {case}")
        row: dict[str, Any] = {
            "case": case,
            "label": label,
            "samples": list(samples),
            "min": min(samples),
            "median": statistics.median(samples),
            "max": max(samples),
            "ratio": None,
        }
        if x is not None:
            row["x"] = x
        if series is not None:
            row["series"] = series
        self.rows.append(row)
        return row

    def row(self, case: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["case"] == case)

    def finish(self) -> dict[str, Any]:
        """Fill each row's ratio to the baseline's median (same ``x``, if rows have one)."""
        if self.baseline is not None:
            for row in self.rows:
                base = next(
                    (
                        r
                        for r in self.rows
                        if r["case"] == self.baseline and r.get("x") == row.get("x")
                    ),
                    None,
                )
                if base is not None and base["median"]:
                    row["ratio"] = row["median"] / base["median"]
        return {
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "baseline": self.baseline,
            "rows": self.rows,
        }


@dataclass
class Result:
    """A benchmark's results; `save` prints a summary and writes the JSON file."""

    name: str
    title: str
    description: str
    tables: list[Table] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    clock: float = field(default_factory=time.perf_counter)

    def table(self, title: str, unit: str, **options: Any) -> Table:
        table = Table(title, unit, **options)
        self.tables.append(table)
        return table

    def target(self, name: str, target: str, value: str, met: bool) -> None:
        self.targets.append({"name": name, "target": target, "value": value, "met": met})

    def save(self, output: Path | None = None) -> Path:
        argv = [Path(sys.argv[0]).stem]
        rest = iter(sys.argv[1:])
        for arg in rest:  # where the file goes is not how it was measured (and is a local path)
            if arg == "--output":
                next(rest, None)
            elif not arg.startswith("--output="):
                argv.append(arg)
        payload = {
            "benchmark": self.name,
            "title": self.title,
            "description": self.description,
            "command": " ".join(["python", "-m", f"bench.{argv[0]}", *argv[1:]]),
            "machine": machine(),
            "started": dt.datetime.fromtimestamp(self.started, dt.UTC).isoformat(
                timespec="seconds"
            ),
            "seconds": round(time.perf_counter() - self.clock, 1),
            "tables": [t.finish() for t in self.tables],
            "targets": self.targets,
            "notes": self.notes,
        }
        path = output or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(summary(payload))
        print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return path


def fmt(value: float) -> str:
    """A figure with sensible precision for a table."""
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def markdown_table(table: Mapping[str, Any]) -> list[str]:
    baseline = table.get("baseline")
    rows = table["rows"]
    has_ratio = baseline is not None and any(r["ratio"] is not None for r in rows)
    head = f"| case | {table['unit']} min / median / max |"
    rule = "|---|---|"
    if has_ratio:
        base_label = next((r["label"] for r in rows if r["case"] == baseline), baseline)
        if any("x" in row for row in rows):  # a sweep: each row against the baseline's same x
            base_label = f"{baseline} at the same N"
        head += f" vs {base_label} (median) |"
        rule += "---|"
    lines = [head, rule]
    for row in rows:
        spread = f"{fmt(row['min'])} / {fmt(row['median'])} / {fmt(row['max'])}"
        line = f"| {row['label']} | {spread} |"
        if has_ratio:
            line += " - |" if row["ratio"] is None else f" {row['ratio']:.2f}x |"
        lines.append(line)
    return lines


def summary(payload: Mapping[str, Any]) -> str:
    lines = [f"# {payload['title']} ({payload['seconds']} s)"]
    for table in payload["tables"]:
        lines += ["", f"{table['title']}:", "", *markdown_table(table)]
    if payload["targets"]:
        lines.append("")
    for target in payload["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(f"- {target['name']}: target {target['target']}, {target['value']}: {verdict}")
    return "\n".join(lines)
