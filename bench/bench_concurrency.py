"""Concurrency: N idle followers of one stream on one uvicorn process, N up to 10,000.

What it measures, for each N (``--sizes``, default 100, 1,000, 5,000 and 10,000):

- the server's resident memory per follower: (RSS with N followers - RSS idle) / N;
- the Redis connections the server process holds with N followers connected;
- the time for one event to reach all N followers: from just before the publish to the moment
  the last follower's bytes reach the client process (and the median follower's, in the notes).

Two apps from `bench.queue_apps`, each in a fresh uvicorn process per run, against one
``redis-server`` the benchmark starts: ``ours`` (`StreamingMiddleware` + ``stream_response`` in
Redis mode: one shared Pub/Sub connection per process) and ``relay``, the hand-rolled baseline
with one Redis ``PubSub`` per request. A separate client process (uvloop, raw sockets, one
`asyncio.Protocol` per follower) opens the N followers in batches, then reports every event's
arrival at every follower and finally checks that every follower got every event exactly once.
Events are published from this process: ours with `SyncRedisChannel` (the worker-side path),
the relay with a plain ``PUBLISH``. ``relay`` holds one Redis connection (one socket) per
follower, so it only runs up to ``--relay-max`` followers (default 5,000).

Run: python -m bench.bench_concurrency [--repeat 3] [--sizes 100,1000,5000,10000]
[--events 3] [--relay-max 5000] [--batch 200] [--quick] [--output FILE]

Prints a table per measure (min / median / max over runs and the ratio of medians to the relay
at the same N) and the targets; writes ``bench/results/concurrency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import redis

from streaming_mw import StreamEvent
from streaming_mw.channels.redis import StreamKeys, SyncRedisChannel
from streaming_mw.config import ChannelConfig

from ._harness import (
    JsonLinesChild,
    Result,
    Uvicorn,
    client_process,
    common_args,
    redis_server,
    stop,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

MODULE = "bench.bench_concurrency"
APPS = {"ours": "bench.queue_apps:ours", "relay": "bench.queue_apps:relay"}
LABELS = {"ours": "streaming_mw", "relay": "relay"}
BENCH_CLIENT_NAME = "bench-concurrency"
DEFAULT_SIZES = (100, 1_000, 5_000, 10_000)
QUICK_SIZES = (10, 50)
CONNECTIONS_TARGET = 3
FANOUT_TARGET_MS = 250.0
FANOUT_MAX_TARGET_MS = 500.0
MEMORY_TARGET_KIB = 25.0
BATCH_TIMEOUT = 60.0
"""Seconds the client waits for one batch of followers to be answered."""
SETTLE = 1.0
"""Seconds between the last follower's answer and the measurements."""
EVENT_SPACING = 0.5
"""Seconds at least between two published events."""

DESCRIPTION = """\
N idle followers of one stream on one uvicorn process (uvloop, httptools), N = {sizes}, and one
`redis-server` on the same machine. Each run starts a fresh server (Python keeps freed memory,
so RSS is only clean on a fresh process), opens and closes one warm-up follower, reads the
server's RSS, then a separate client process (uvloop, raw sockets) opens N followers of the
stream in batches of {batch}, each batch once the previous one has its answers (the HTTP 200
headers for streaming_mw, which it sends once the follower is subscribed; the first comment for
the relay, which it sends after its `SUBSCRIBE`; Redis' `PUBSUB NUMSUB` is checked too). After
{settle:g} s the benchmark reads the server's RSS again (memory per follower = the growth / N)
and counts the Redis connections the server process holds (`CLIENT LIST` entries whose port is
one of the server process's sockets, from `/proc`). Then it publishes {events} events, at least
{spacing:g} s apart, each carrying `time.monotonic_ns()` (one clock for all processes on Linux):
streaming_mw through `SyncRedisChannel.publish`, as a worker process does, the relay with
`PUBLISH`. The fan-out time of an event is from just before the publish until the client process
has read it on the last of the N followers; the client's own reading is included, and the
client, the server and Redis share the machine's {cores} cores. The client checks that every
follower got every event exactly once. Baseline: the hand-rolled relay of `bench/queue_apps.py`,
one Redis `PubSub` per request (its pool allowed past redis-py 8's default of 100
connections), run up to N = {relay_max:,} (one Redis socket per
follower: at 10,000 followers it would need 20,000 file descriptors in one process). {repeat}
runs per N and app, interleaved; RSS and connections have one sample per run, fan-out one per
event."""


# client (runs in its own process) ------------------------------------------------------------


class Shared:
    """What the client's followers share: each event's arrival times; reports a complete one."""

    def __init__(self, followers: int) -> None:
        self.followers = followers
        self.arrivals: dict[int, list[int]] = {}
        self.closing = False
        self.lost = 0

    def arrived(self, index: int, published_ns: int, now_ns: int) -> None:
        times = self.arrivals.setdefault(index, [])
        times.append(now_ns)
        if len(times) == self.followers:
            times.sort()
            emit(
                {
                    "event": index,
                    "last_ms": (times[-1] - published_ns) / 1e6,
                    "p50_ms": (times[len(times) // 2] - published_ns) / 1e6,
                    "first_ms": (times[0] - published_ns) / 1e6,
                }
            )


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class FollowerProtocol(asyncio.Protocol):
    """One follower: sends the GET, parses the HTTP head, de-chunks, splits SSE blocks."""

    def __init__(self, shared: Shared, request: bytes, ready_on_comment: bool) -> None:
        self.shared = shared
        self.request = request
        self.ready_on_comment = ready_on_comment
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seen: list[int] = []
        self._seen_set: set[int] = set()
        self._raw = bytearray()
        self._body = bytearray()
        self._head_done = False
        self._chunked = False
        self._remaining = 0
        self._skip = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"follower connection lost: {exc}"))
        if not self.shared.closing:
            self.shared.lost += 1

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self._raw += data
        if not self._head_done and not self._read_head():
            return
        if self._chunked:
            self._dechunk()
        else:
            self._body += self._raw
            self._raw.clear()
        body = self._body
        while (end := body.find(b"\n\n")) >= 0:
            block = bytes(body[:end])
            del body[: end + 2]
            self._block(block, now)

    def _read_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._raw[:end]).lower()
        del self._raw[: end + 4]
        if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
            failure = RuntimeError(f"answer: {head.splitlines()[0]!r}")
            if not self.ready.done():
                self.ready.set_exception(failure)
            return False
        self._head_done = True
        self._chunked = b"transfer-encoding: chunked" in head
        if not self.ready_on_comment:
            self.ready.set_result(None)
        return True

    def _dechunk(self) -> None:
        raw = self._raw
        while raw:
            if self._skip:
                taken = min(self._skip, len(raw))
                del raw[:taken]
                self._skip -= taken
            elif self._remaining:
                taken = min(self._remaining, len(raw))
                self._body += raw[:taken]
                del raw[:taken]
                self._remaining -= taken
                if not self._remaining:
                    self._skip = 2  # the CRLF after the chunk's data
            else:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(raw[:end]).split(b";")[0], 16)
                del raw[: end + 2]
                if size == 0:
                    raw.clear()
                    return
                self._remaining = size

    def _block(self, block: bytes, now: int) -> None:
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                doc = json.loads(line[6:])
                index = int(doc["i"])
                self.seen.append(index)
                if index not in self._seen_set:
                    self._seen_set.add(index)
                    self.shared.arrived(index, int(doc["t"]), now)
            elif line.startswith(b":") and not self.ready.done():
                self.ready.set_result(None)


async def client(
    port: int, followers: int, path: str, ready_on_comment: bool, events: int, batch: int
) -> None:
    """Open ``followers`` followers of ``path`` in batches, report, relay arrivals, verify."""
    loop = asyncio.get_running_loop()
    shared = Shared(followers)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    opened: list[FollowerProtocol] = []
    start = time.perf_counter()
    for first in range(0, followers, batch):
        protocols: list[FollowerProtocol] = []
        for _ in range(min(batch, followers - first)):
            _, protocol = await loop.create_connection(
                lambda: FollowerProtocol(shared, request, ready_on_comment), "127.0.0.1", port
            )
            protocols.append(protocol)
        opened += protocols
        async with asyncio.timeout(BATCH_TIMEOUT):
            await asyncio.gather(*(p.ready for p in protocols))
    emit({"ready": followers, "seconds": time.perf_counter() - start})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "close":
            break
    shared.closing = True
    for protocol in opened:
        if protocol.transport is not None:
            protocol.transport.close()
    expected = list(range(events))
    bad = [p.seen for p in opened if p.seen != expected]
    emit({"closed": followers, "bad": len(bad), "lost": shared.lost, "example": bad[:3]})


def run_client_loop(args: Sequence[str]) -> None:
    port, followers, path, ready_on, events, batch = args
    coroutine = client(
        int(port), int(followers), path, ready_on == "comment", int(events), int(batch)
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(coroutine)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coroutine)


# the benchmark (this process) -----------------------------------------------------------------


class ClientRun(JsonLinesChild):
    """A running client process; its JSON lines read by a thread so waits can time out."""

    def __init__(self, *args: object) -> None:
        super().__init__(client_process(MODULE, *args))


@dataclass
class Run:
    """What one run (one app, one N, one fresh server) measured."""

    rss_idle: int
    rss_loaded: int
    idle_connections: int
    connections: int
    connect_seconds: float
    last_ms: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)


def socket_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s established TCP sockets to ``remote_port`` (Linux ``/proc``)."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                if state == "01" and inode in inodes and int(remote[-4:], 16) == remote_port:
                    ports.add(int(local[-4:], 16))
    return ports


def held_connections(admin: redis.Redis, pid: int, redis_port: int) -> int:
    """Redis connections held by process ``pid``: Redis' ``CLIENT LIST`` entries whose address
    is one of that process's sockets."""
    ports = socket_ports(pid, redis_port)
    clients: list[dict[str, Any]] = admin.client_list()
    return sum(1 for c in clients if int(str(c["addr"]).rsplit(":", 1)[1]) in ports)


def foreign_clients(admin: redis.Redis) -> int:
    """Clients of the benchmark's Redis that are not this benchmark's own."""
    clients: list[dict[str, Any]] = admin.client_list()
    return sum(1 for c in clients if c.get("name") != BENCH_CLIENT_NAME)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def warm_up(port: int, path: str) -> None:
    """One follower opened and closed: imports, first-request paths, the Pub/Sub connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        seen = b""
        while b"\r\n\r\n" not in seen:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"warm-up of {path}: connection closed")
            seen += chunk
        if not seen.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"warm-up of {path}: {seen.splitlines()[0]!r}")


@dataclass
class Bench:
    """The shared pieces of every run: Redis, the publishers, the options."""

    redis_url: str
    args: argparse.Namespace
    admin: redis.Redis = field(init=False)
    channel: SyncRedisChannel = field(init=False)
    runs: int = 0

    def __post_init__(self) -> None:
        self.admin = redis.Redis.from_url(self.redis_url, client_name=BENCH_CLIENT_NAME)
        self.channel = SyncRedisChannel(self.admin, ChannelConfig())

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379

    def run(self, app: str, followers: int) -> Run:
        self.runs += 1
        stream_id = f"concurrency-{app}-{followers}-{self.runs}"
        if app == "ours":
            self.channel.create(stream_id)
            path, live = f"/streams/{stream_id}", StreamKeys("stream:", stream_id).live
            subscribers = 1  # one Pub/Sub connection, whatever the number of followers
        else:
            path, live = f"/relay/{stream_id}", f"relay:{stream_id}"
            subscribers = followers
        env = {"REDIS_URL": self.redis_url}
        if app == "ours":
            env["STREAMING_MODE"] = "redis"
        wait_for(lambda: foreign_clients(self.admin) == 0, 30, "the last server's connections")
        server = Uvicorn(APPS[app], env=env).start().wait()
        client: ClientRun | None = None
        try:
            warm_up(server.port, path)
            wait_for(lambda: self._numsub(live) == 0, 10, "the warm-up follower to leave")
            time.sleep(0.2)
            rss_idle = server.rss_bytes()
            idle_connections = held_connections(self.admin, server.pid, self.redis_port)
            ready_on = "headers" if app == "ours" else "comment"
            events = self.args.events
            client = ClientRun(server.port, followers, path, ready_on, events, self.args.batch)
            ready = client.next(timeout=60 + followers / 50)
            wait_for(lambda: self._numsub(live) == subscribers, 30, f"{subscribers} subscribers")
            time.sleep(SETTLE)  # let the opening's after-work (and its garbage collection) end
            run = Run(
                rss_idle=rss_idle,
                idle_connections=idle_connections,
                rss_loaded=server.rss_bytes(),
                connections=held_connections(self.admin, server.pid, self.redis_port),
                connect_seconds=float(ready["seconds"]),
            )
            for index in range(events):
                started = time.monotonic()
                self._publish(app, stream_id, live, index)
                arrived = client.next(timeout=30 + followers / 100)
                if arrived.get("event") != index:
                    raise RuntimeError(f"{app}@{followers}: expected event {index}, got {arrived}")
                run.last_ms.append(float(arrived["last_ms"]))
                run.p50_ms.append(float(arrived["p50_ms"]))
                time.sleep(max(0.0, started + EVENT_SPACING - time.monotonic()))
            client.say("close")
            verdict = client.next(timeout=60)
            if verdict["bad"] or verdict["lost"]:
                raise RuntimeError(f"{app}@{followers}: followers missed events: {verdict}")
            return run
        finally:
            if client is not None:
                client.stop()
            stop([server.process] if server.process is not None else [])

    def _numsub(self, channel: str) -> int:
        answer: list[tuple[bytes | str, int]] = self.admin.pubsub_numsub(channel)
        return int(answer[0][1])

    def _publish(self, app: str, stream_id: str, live: str, index: int) -> None:
        if app == "ours":
            self.channel.publish(
                stream_id, StreamEvent("progress", {"t": time.monotonic_ns(), "i": index})
            )
        else:
            payload = json.dumps({"t": time.monotonic_ns(), "i": index})
            self.admin.publish(live, payload)


def plan(args: argparse.Namespace) -> Iterator[tuple[int, str, int]]:
    """(repetition, app, N) in run order: every N in turn, apps alternating who goes first."""
    for repetition in range(args.repeat):
        for followers in args.sizes:
            apps = ["ours", "relay"] if repetition % 2 == 0 else ["relay", "ours"]
            for app in apps:
                if app == "relay" and followers > args.relay_max:
                    continue
                yield repetition, app, followers


def measure(args: argparse.Namespace) -> dict[tuple[str, int], list[Run]]:
    runs: dict[tuple[str, int], list[Run]] = {}
    with redis_server() as url:
        bench = Bench(url, args)
        try:
            for repetition, app, followers in plan(args):
                run = bench.run(app, followers)
                runs.setdefault((app, followers), []).append(run)
                print(
                    f"[{repetition + 1}/{args.repeat}] {app}@{followers}: "
                    f"{(run.rss_loaded - run.rss_idle) / followers / 1024:.1f} KiB/follower, "
                    f"{run.connections} Redis connections, fan-out last "
                    f"{', '.join(f'{v:.0f}' for v in run.last_ms)} ms, "
                    f"opened in {run.connect_seconds:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            bench.admin.close()
    return runs


def describe(args: argparse.Namespace) -> str:
    return DESCRIPTION.format(
        sizes=", ".join(f"{n:,}" for n in args.sizes),
        batch=args.batch,
        events=args.events,
        spacing=EVENT_SPACING,
        settle=SETTLE,
        cores=os.cpu_count(),
        relay_max=args.relay_max,
        repeat=args.repeat,
    )


def report(
    result: Result, args: argparse.Namespace, runs: dict[tuple[str, int], list[Run]]
) -> None:
    memory = result.table("RSS per stream", "KiB", higher_is_better=False, baseline="relay")
    held = result.table("Redis connections held", "count", higher_is_better=False, baseline="relay")
    fanout = result.table(
        "time for one event to reach all N followers",
        "ms",
        higher_is_better=False,
        baseline="relay",
    )
    for followers in args.sizes:
        for app in ("ours", "relay"):
            samples = runs.get((app, followers))
            if not samples:
                continue
            # One case per app: the harness compares rows of the same case and x to the baseline.
            label = f"{LABELS[app]}, N={followers:,}"
            per_stream = [(r.rss_loaded - r.rss_idle) / followers / 1024 for r in samples]
            memory.add(app, label, per_stream, x=followers, series=app)
            held.add(app, label, [r.connections for r in samples], x=followers, series=app)
            last = [v for r in samples for v in r.last_ms]
            fanout.add(app, label, last, x=followers, series=app)
            p50 = statistics.median(v for r in samples for v in r.p50_ms)
            opened = statistics.median(r.connect_seconds for r in samples)
            idle = statistics.median(r.rss_idle for r in samples) / 2**20
            result.notes.append(
                f"{label}: median follower got an event after {p50:.1f} ms (median over "
                f"events); opening the {followers:,} followers took {opened:.2f} s; idle server "
                f"RSS {idle:.0f} MiB."
            )
    held_idle = [r.idle_connections for (app, _), rs in runs.items() if app == "ours" for r in rs]
    result.notes.append(
        f"Before its N followers came (after the one warm-up follower), the streaming_mw server "
        f"held {min(held_idle)} to {max(held_idle)} Redis connections."
    )
    result.notes.append(
        f"The relay is not run above N = {args.relay_max:,}: it holds one Redis connection per "
        "follower, so N followers need 2N sockets in one process (the open-file limit here is "
        "20,000)."
    )
    targets(result, args, runs)


def targets(
    result: Result, args: argparse.Namespace, runs: dict[tuple[str, int], list[Run]]
) -> None:
    ours = {n: [r.connections for r in runs[("ours", n)]] for n in args.sizes}
    everything = [c for counts in ours.values() for c in counts]
    per_n = ", ".join(f"N={n:,}: {'/'.join(map(str, c))}" for n, c in ours.items())
    result.target(
        "Redis connections held by one streaming_mw process",
        f"<= {CONNECTIONS_TARGET}, the same for every N",
        per_n,
        max(everything) <= CONNECTIONS_TARGET and min(everything) == max(everything),
    )
    largest = max(args.sizes)
    times = [v for r in runs[("ours", largest)] for v in r.last_ms]
    median = statistics.median(times)
    result.target(
        f"time for one event to reach all {largest:,} followers (median)",
        f"<= {FANOUT_TARGET_MS:.0f} ms",
        f"{median:.0f} ms (min {min(times):.0f}, max {max(times):.0f}; {len(times)} events)",
        median <= FANOUT_TARGET_MS,
    )
    result.target(
        f"time for one event to reach all {largest:,} followers (max)",
        f"<= {FANOUT_MAX_TARGET_MS:.0f} ms",
        f"{max(times):.0f} ms (min {min(times):.0f}, median {median:.0f})",
        max(times) <= FANOUT_MAX_TARGET_MS,
    )
    kib = [(r.rss_loaded - r.rss_idle) / largest / 1024 for r in runs[("ours", largest)]]
    result.target(
        f"idle memory per followed stream, N={largest:,} (median)",
        f"<= {MEMORY_TARGET_KIB:.0f} KiB",
        f"{statistics.median(kib):.1f} KiB (min {min(kib):.1f}, max {max(kib):.1f})",
        statistics.median(kib) <= MEMORY_TARGET_KIB,
    )


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="N idle followers on one uvicorn process.")
    common_args(parser)
    parser.add_argument("--sizes", type=sizes, default=DEFAULT_SIZES, help="N values, 100,1000")
    parser.add_argument("--events", type=int, default=3, help="events published per run")
    parser.add_argument("--relay-max", type=int, default=5_000, help="largest N for the relay")
    parser.add_argument("--batch", type=int, default=200, help="followers opened at once")
    parser.add_argument("--client", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.sizes, args.events = 1, QUICK_SIZES, 2
    return args


def main() -> None:
    args = parse()
    if args.client:
        run_client_loop(args.client)
        return
    result = Result("concurrency", "Concurrency: N idle followers", describe(args))
    load_before = os.getloadavg()[0]
    report(result, args, measure(args))
    result.notes.append(
        f"Load average (1 min) {load_before:.2f} before the run and {os.getloadavg()[0]:.2f} "
        f"after it, on {os.cpu_count()} cores."
    )
    result.save(args.output)


if __name__ == "__main__":
    main()
