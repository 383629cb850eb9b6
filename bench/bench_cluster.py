"""Scaling out: live fan-out on one Redis node against a 3-master Redis Cluster.

Followers spread over many streams (``--streams`` streams x ``--followers`` followers each),
served by two uvicorn processes of ``bench.queue_apps:ours`` in Redis mode (one web process per
core of the machine this was written for), a stream's followers alternating between them. Three
publisher processes (one per master of the cluster; the same three, with the same streams, on
the single node, so the pairing is fair) append ``--events`` events to each of their streams as
fast as a synchronous `SyncRedisChannel` goes, as a worker does. On the cluster, publisher *k*
publishes the streams whose slot the *k*-th master owns.

Measured per run (new streams every run, 1 node and the cluster interleaved, their order
alternating; the processes of each setup start once):

- events/s delivered to followers: every follower's events (``streams x followers x events``)
  over the time from the first publisher's start to the last event read by the client process;
  the client checks every follower got every event exactly once, in order;
- events/s appended by the three publishers together;
- Redis connections each web process holds on each node: ``CLIENT LIST`` entries named
  ``streaming_mw`` (the library's ``CLIENT SETNAME``) whose address is one of that process's
  sockets (from ``/proc``), once every follower is subscribed and again after the events.

Run: python -m bench.bench_cluster [--repeat 3] [--streams 200] [--followers 5] [--events 60]
[--quick] [--output FILE]

Prints a table per measure (min / median / max over runs, the ratio of medians to one node) and
the targets; writes ``bench/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.cluster
from redis.crc import key_slot

from streaming_mw import StreamEvent
from streaming_mw._redis import CLIENT_NAME
from streaming_mw.channels.redis import StreamKeys, SyncRedisChannel
from streaming_mw.config import QueueRedisConfig

from ._harness import (
    JsonLinesChild,
    Result,
    Uvicorn,
    client_process,
    common_args,
    raise_nofile,
    stop,
    wait_port,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

MODULE = "bench.bench_cluster"
APP = "bench.queue_apps:ours"
WEB_PROCESSES = 2
MASTERS = 3
SETUPS = ("node", "cluster")
LABELS = {"node": "1 Redis node", "cluster": "3-master Redis Cluster"}
COMMAND_CONNECTIONS = QueueRedisConfig("redis://localhost").max_connections - 1
"""The "small constant" of the connection target, per node: command connections beside the
sharded subscriber (a cluster client runs ``max_connections - 1`` commands at once)."""
BENCH_NAME = "bench-cluster"
BATCH = 100
"""Followers the client opens at once."""
RUN_TIMEOUT = 120.0

DESCRIPTION = """\
Live fan-out to followers spread over many streams: {streams} streams x {followers} followers
({total:,} followers), served by {web} uvicorn processes of `bench/queue_apps.py`'s `ours` app in
Redis mode (one per core), a stream's followers alternating between them, so each process
subscribes every stream's channel. {publishers} publisher processes append {events} events to
each of their streams as fast as `SyncRedisChannel.publish` goes (one synchronous round trip per
event, as a worker does): on the cluster, one per master, each publishing the streams its master
owns; on the single node the same three processes with the same streams. A separate client
process (uvloop, raw sockets) opens the followers in batches of {batch}, waits for every answer
(the library sends its headers once the follower is subscribed), then the publishers start. The
delivery rate is every follower's events ({delivered:,} in all) over the time from the first
publisher's start to the last event read; the client checks every follower got every event
exactly once, in order. Redis connections are counted per web process and per node from
`CLIENT LIST` (entries named `streaming_mw` whose address is one of the process's sockets),
once every follower is subscribed and again after the events. Everything (Redis nodes, web
processes, publishers, client) shares the machine's {cores} cores. The processes of both
setups start once and stay up; {repeat} runs per setup, interleaved, the order alternating,
every run on new streams (the same ones for both setups in a repetition)."""


# the local cluster ---------------------------------------------------------------------------


def cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is valid and free as well."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port in taken or port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000)")


def cluster_ok(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        info = redis.Redis(port=port, client_name=BENCH_NAME).cluster("info")
        return bool(info.get("cluster_state") == "ok") and str(
            info.get("cluster_known_nodes")
        ) == str(MASTERS)
    return False


@contextlib.contextmanager
def redis_nodes(cluster: bool, count: int) -> Iterator[list[int]]:
    """``count`` throwaway redis-servers (no persistence), joined as a cluster if asked."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise SystemExit("redis-server and redis-cli must be on PATH (scripts/test installs them)")
    taken: set[int] = set()
    ports = []
    for _ in range(count):
        ports.append(cluster_port(taken))
        taken.update((ports[-1], ports[-1] + 10000))
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
        try:
            for port in ports:
                command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
                command += ["--appendonly", "no", "--maxclients", "20000", "--dir", workdir]
                if cluster:
                    command += ["--cluster-enabled", "yes"]
                    command += ["--cluster-config-file", f"nodes-{port}.conf"]
                processes.append(
                    subprocess.Popen(
                        command,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        preexec_fn=raise_nofile,
                    )
                )
            for port, process in zip(ports, processes, strict=True):
                wait_port(port, process)
            if cluster:
                addresses = [f"127.0.0.1:{port}" for port in ports]
                create = [cli, "--cluster", "create", *addresses, "--cluster-yes"]
                subprocess.run(create, capture_output=True, timeout=30, check=True)
                deadline = time.monotonic() + 30
                while not all(cluster_ok(port) for port in ports):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cluster did not reach cluster_state:ok")
                    time.sleep(0.1)
            yield ports
        finally:
            stop(processes)


# publisher and client processes --------------------------------------------------------------


def run_publisher(args: Sequence[str]) -> None:
    """``url sharded``: then for each ``go <streams> <events>`` line, publish and report."""
    url, sharded = args
    client: redis.Redis | redis.cluster.RedisCluster
    if sharded == "1":
        client = redis.cluster.RedisCluster.from_url(url, client_name=BENCH_NAME)
    else:
        client = redis.Redis.from_url(url, client_name=BENCH_NAME)
    channel = SyncRedisChannel(client)
    warm = f"warm-{os.getpid()}"  # connect, load the script, on a stream nobody follows
    channel.create(warm)
    channel.publish(warm, StreamEvent("progress", {"i": -1}))
    emit({"ready": True})
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command != "go":
            break
        streams_text, _, events_text = rest.partition(" ")
        streams, events = streams_text.split(","), int(events_text)
        start = time.monotonic_ns()
        for i in range(events):
            for stream_id in streams:
                channel.publish(stream_id, StreamEvent("progress", {"i": i}))
        end = time.monotonic_ns()
        emit({"start_ns": start, "end_ns": end, "published": events * len(streams)})
    client.close()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Follower(asyncio.Protocol):
    """One follower: the GET, the HTTP head, then every ``"i"`` of its ``data:`` lines."""

    def __init__(self, request: bytes, expected: int, done: asyncio.Event, left: list[int]) -> None:
        self.request = request
        self.expected = expected
        self.done, self.left = done, left
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seen: list[int] = []
        self.last_ns = 0
        self._buffer = bytearray()
        self._head = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"follower lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self._buffer += data
        if not self._head:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._buffer.startswith(b"HTTP/1.1 200"):
                self.ready.set_exception(RuntimeError(bytes(self._buffer[:40]).decode()))
                return
            del self._buffer[: end + 4]
            self._head = True
            self.ready.set_result(None)
        before = len(self.seen)
        start = 0
        # Chunk-size lines are not "data:" lines; every event's one data line is whole once
        # its line feed arrived.
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = self._buffer[start:end]
            if line.startswith(b"data: "):
                self.seen.append(int(json.loads(bytes(line[6:]))["i"]))
            start = end + 1
        del self._buffer[:start]
        if len(self.seen) != before:
            self.last_ns = now
            if len(self.seen) >= self.expected and before < self.expected:
                self.left[0] -= 1
                if not self.left[0]:
                    self.done.set()


async def follow(ports: list[int], streams: list[str], followers: int, events: int) -> None:
    """Open ``followers`` followers of each stream, report, wait for every event, verify."""
    loop = asyncio.get_running_loop()
    done, left = asyncio.Event(), [len(streams) * followers]
    opened: list[Follower] = []
    plan = [(n, s, f) for n, s in enumerate(streams) for f in range(followers)]
    try:
        for first in range(0, len(plan), BATCH):
            batch: list[Follower] = []
            for number, stream_id, index in plan[first : first + BATCH]:
                request = f"GET /streams/{stream_id} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
                factory = functools.partial(Follower, request, events, done, left)
                port = ports[(number + index) % len(ports)]
                _, follower = await loop.create_connection(factory, "127.0.0.1", port)
                batch.append(follower)
            opened += batch
            async with asyncio.timeout(60):
                await asyncio.gather(*(f.ready for f in batch))
        emit({"ready": len(opened)})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RUN_TIMEOUT):
                await done.wait()
        expected = list(range(events))
        bad = [f.seen for f in opened if f.seen != expected]
        emit(
            {
                "last_ns": max(f.last_ns for f in opened),
                "delivered": sum(len(f.seen) for f in opened),
                "bad": len(bad),
                "example": [b[:10] for b in bad[:3]],
            }
        )
    finally:
        for follower in opened:
            if follower.transport is not None:
                follower.transport.close()


async def client(ports: list[int]) -> None:
    """For each ``open <streams> <followers> <events>`` line, one `follow`."""
    loop = asyncio.get_running_loop()
    emit({"ready": True})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command, *rest = line.split() or ["close"]
        if command != "open":
            return
        streams, followers, events = rest
        await follow(ports, streams.split(","), int(followers), int(events))


def run_client(args: Sequence[str]) -> None:
    import uvloop

    ports = [int(p) for p in args[0].split(",")]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(client(ports))


class Child(JsonLinesChild):
    """A publisher or client child process of this benchmark, speaking JSON lines."""

    def __init__(self, role: str, *args: object) -> None:
        super().__init__(client_process(MODULE, *args, role=role), name="child")


# the benchmark (this process) -----------------------------------------------------------------


@dataclass
class Run:
    delivered_per_s: float
    appended_per_s: float
    subscribed: list[list[int]]
    """Connections per web process (outer) and node (inner) once every follower subscribed."""
    after: list[list[int]]
    """The same after the events."""


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


@dataclass
class Setup:
    """One Redis setup (a node or a cluster) with its web processes, publishers and client."""

    name: str
    ports: list[int]
    admins: list[redis.Redis] = field(init=False)
    servers: list[Uvicorn] = field(default_factory=list)
    publishers: list[Child] = field(default_factory=list)
    client: Child | None = None

    def __post_init__(self) -> None:
        self.admins = [redis.Redis(port=p, client_name=BENCH_NAME) for p in self.ports]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def sharded(self) -> bool:
        return self.name == "cluster"

    def start(self, web: int, publishers: int) -> None:
        """Start the web processes, the publishers and the client (not waiting)."""
        env = {"REDIS_URL": self.url, "STREAMING_MODE": "redis"}
        self.servers = [Uvicorn(APP, env=env).start() for _ in range(web)]
        sharded = int(self.sharded)
        self.publishers = [Child("--publisher", self.url, sharded) for _ in range(publishers)]
        self.client = Child("--client", ",".join(str(s.port) for s in self.servers))

    def wait(self) -> None:
        for server in self.servers:
            server.wait(timeout=120)
        for child in [*self.publishers, self.follower]:
            child.next(timeout=120)

    @property
    def follower(self) -> Child:
        assert self.client is not None
        return self.client

    def connections(self, pid: int) -> list[int]:
        """Connections named by the library from process ``pid``, per node."""
        counts = []
        for port, admin in zip(self.ports, self.admins, strict=True):
            mine = socket_ports(pid, port)
            entries: list[dict[str, Any]] = admin.client_list()
            counts.append(
                sum(
                    1
                    for e in entries
                    if e.get("name") == CLIENT_NAME
                    and int(str(e["addr"]).rsplit(":", 1)[1]) in mine
                )
            )
        return counts

    def create(self, streams: Sequence[str]) -> None:
        sync: redis.Redis | redis.cluster.RedisCluster = (
            redis.cluster.RedisCluster.from_url(self.url, client_name=BENCH_NAME)
            if self.sharded
            else redis.Redis.from_url(self.url, client_name=BENCH_NAME)
        )
        try:
            channel = SyncRedisChannel(sync)
            for stream_id in streams:
                channel.create(stream_id)
        finally:
            sync.close()

    def run(self, streams: list[str], parts: list[list[str]], args: argparse.Namespace) -> Run:
        """One run on new streams: open the followers, publish, count."""
        self.create(streams)
        follower = self.follower
        follower.say(f"open {','.join(streams)} {args.followers} {args.events}")
        follower.next(timeout=120)
        time.sleep(0.5)
        subscribed = [self.connections(s.pid) for s in self.servers]
        for publisher, part in zip(self.publishers, parts, strict=True):
            publisher.say(f"go {','.join(part)} {args.events}")
        published = [p.next(timeout=RUN_TIMEOUT) for p in self.publishers]
        verdict = follower.next(timeout=RUN_TIMEOUT + 30)
        after = [self.connections(s.pid) for s in self.servers]
        if verdict["bad"]:
            raise RuntimeError(f"{self.name}: followers missed events: {verdict}")
        start = min(p["start_ns"] for p in published)
        appended = sum(p["published"] for p in published)
        append_end = max(p["end_ns"] for p in published)
        return Run(
            delivered_per_s=verdict["delivered"] / ((verdict["last_ns"] - start) / 1e9),
            appended_per_s=appended / ((append_end - start) / 1e9),
            subscribed=subscribed,
            after=after,
        )

    def close(self) -> None:
        for child in [*self.publishers, *([self.client] if self.client else [])]:
            child.stop()
        stop([s.process for s in self.servers if s.process is not None])
        for admin in self.admins:
            admin.close()


def partition(cluster: Setup, streams: list[str]) -> list[list[str]]:
    """The streams of each master of ``cluster``, by the slot of their keys."""
    owner: dict[int, int] = {}
    for low, high, node, *_ in cluster.admins[0].cluster("slots"):
        for slot in range(low, high + 1):
            owner[slot] = cluster.ports.index(int(node[1]))
    parts: list[list[str]] = [[] for _ in cluster.ports]
    for stream_id in streams:
        parts[owner[key_slot(StreamKeys("stream:", stream_id).meta.encode())]].append(stream_id)
    return parts


def plan(repeat: int) -> Iterator[tuple[int, str]]:
    for repetition in range(repeat):
        order = SETUPS if repetition % 2 == 0 else SETUPS[::-1]
        for name in order:
            yield repetition, name


def measure(args: argparse.Namespace) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {name: [] for name in SETUPS}
    with redis_nodes(False, 1) as node_ports, redis_nodes(True, MASTERS) as cluster_ports:
        setups = {"node": Setup("node", node_ports), "cluster": Setup("cluster", cluster_ports)}
        try:
            for setup in setups.values():
                setup.start(args.web, args.publishers)
            for setup in setups.values():
                setup.wait()
            for repetition, name in plan(args.repeat):
                # New streams every run; the same ones on both setups in a repetition.
                streams = [f"r{repetition}-{i}" for i in range(args.streams)]
                parts = partition(setups["cluster"], streams)
                if args.publishers == 1:
                    parts = [streams]
                run = setups[name].run(streams, parts, args)
                runs[name].append(run)
                print(
                    f"[{repetition + 1}/{args.repeat}] {name}: {run.delivered_per_s:,.0f} "
                    f"events/s delivered, {run.appended_per_s:,.0f} appended/s, connections "
                    f"per web process and node {run.subscribed} -> {run.after}",
                    file=sys.stderr,
                    flush=True,
                )
            args.parts = [len(part) for part in parts]
        finally:
            for setup in setups.values():
                setup.close()
    return runs


def describe(args: argparse.Namespace) -> str:
    return DESCRIPTION.format(
        streams=args.streams,
        followers=args.followers,
        total=args.streams * args.followers,
        web=args.web,
        publishers=args.publishers,
        events=args.events,
        batch=BATCH,
        delivered=args.streams * args.followers * args.events,
        cores=os.cpu_count(),
        repeat=args.repeat,
    )


def report(result: Result, args: argparse.Namespace, runs: dict[str, list[Run]]) -> None:
    delivered = result.table("events delivered to followers", "events/s", baseline="node")
    title = f"events appended by the {args.publishers} publishers"
    appended = result.table(title, "events/s", baseline="node")
    held = result.table(
        "Redis connections per web process (all nodes, after the events)",
        "count",
        higher_is_better=False,
        baseline="node",
    )
    for name in SETUPS:
        delivered.add(name, LABELS[name], [r.delivered_per_s for r in runs[name]])
        appended.add(name, LABELS[name], [r.appended_per_s for r in runs[name]])
        held.add(name, LABELS[name], [sum(c) for r in runs[name] for c in r.after])
    for name in SETUPS:
        seen = sorted({tuple(c) for r in runs[name] for c in (*r.subscribed, *r.after)})
        result.notes.append(
            f"{LABELS[name]}: connections per web process and node (once subscribed, and after "
            f"the events; one tuple per distinct count): {', '.join(map(str, seen))}."
        )
    result.notes.append(
        f"Streams per master of the cluster (so per publisher, on both setups): "
        f"{', '.join(map(str, args.parts))}."
    )
    counts = [c for r in runs["cluster"] for c in (*r.subscribed, *r.after)]
    per_node = [n for c in counts for n in c]
    totals = [sum(c) for c in counts]
    bound = MASTERS * (1 + COMMAND_CONNECTIONS) + 1
    result.target(
        "Redis connections per web process on the 3-master cluster",
        f"<= 1 sharded subscriber + {COMMAND_CONNECTIONS} for commands per master, "
        f"+ 1 for the slot map (= {bound})",
        f"{min(totals)} to {max(totals)} (per node {min(per_node)} to {max(per_node)})",
        max(totals) <= bound,
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fan-out on 1 Redis node vs a 3-master cluster.")
    common_args(parser)
    parser.add_argument("--streams", type=int, default=200, help="streams followed")
    parser.add_argument("--followers", type=int, default=5, help="followers per stream")
    parser.add_argument("--events", type=int, default=60, help="events per stream")
    parser.add_argument("--publisher", nargs=2, metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=1, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.web, args.publishers = WEB_PROCESSES, MASTERS
    if args.quick:  # a smoke run: fewer processes to start, one publisher for every stream
        args.repeat, args.streams, args.followers, args.events = 1, 12, 2, 5
        args.web, args.publishers = 1, 1
    return args


def main() -> None:
    args = parse()
    if args.publisher:
        run_publisher(args.publisher)
        return
    if args.client:
        run_client(args.client)
        return
    result = Result("cluster", "Scaling out: fan-out on a Redis Cluster", describe(args))
    report(result, args, measure(args))
    result.save(args.output)


if __name__ == "__main__":
    main()
