"""Queue-based delivery latency: a publish in a worker process → the bytes read by the client.

Three cases, each its own uvicorn server (``bench/queue_apps.py``) on one real ``redis-server``,
interleaved in every repetition:

- ``relay`` (the baseline): the hand-rolled Redis Pub/Sub relay. A publisher process runs
  ``PUBLISH relay:<stream> {"t": <time.monotonic_ns()>, "i": <n>}``; the server holds one
  ``PubSub`` per request.
- ``ours-redis``: ``ours`` with ``STREAMING_MODE=redis``. The publisher is a separate process
  that publishes the way `QueueWorker` does: a `StreamingContainer` started in Redis mode, its
  `AsyncStreamChannel`, one `StreamContext` per stream, ``await ctx.emit("progress", {"t": ...,
  "i": n})`` (Lua append: ``XADD`` + ``PUBLISH``); the server follows with ``GET
  /streams/<id>``.
- ``ours-memory``: ``ours`` in memory mode; the publisher runs inside the server process
  (``POST /emit``), the only place a memory-mode stream can be published from.

A separate client process opens one HTTP/1.1 connection per stream over raw sockets (asyncio
protocols on uvloop, garbage collector off so the instrument never pauses), waits until every
stream is connected (relay: its ``: subscribed`` comment; ours: HTTP 200 and headers), then the
publisher starts: ``--rate`` events/s in total, round-robin over ``--streams`` streams, paced
against a schedule, for ``--seconds``. For every ``data:`` line the client records
``time.monotonic_ns()`` at the read minus the payload's ``t`` (``time.monotonic_ns`` is one
system-wide clock on Linux) and checks that each stream's events arrive exactly once, in order;
anything else fails the run.

Before those, the seed's own pattern (``--part thread``): ``sse_response`` with a sync worker in
a thread of the web process (``ours`` in ``bench/queue_apps.py``, ``GET /deploy-thread/...``)
beside the ``floor`` app's hand-written relays (memory: ``call_soon_threadsafe`` into an
``asyncio.Queue``; Redis: a thread's ``PUBLISH`` read from one ``redis.asyncio`` Pub/Sub),
memory and Redis, in
interleaved rounds; reported as ours / floor ratios of p50 and p99 per round.

Run: python -m bench.bench_latency [--repeat 3] [--quick] [--streams 100] [--rate 1000]
[--seconds 10] [--warmup 2] [--part all|process|thread] [--thread-streams 20]
[--thread-events 100] [--thread-interval 0.02] [--thread-rounds 8]
[--output bench/results/latency.json] [--dump DIR]

``--dump DIR`` also writes every run's raw latencies and read times (ns) as JSON, to see when
the slow events happened.

Prints tables of p50, p99 and max latency in ms (min / median / max over repetitions, ratio to
the relay), the targets (ours-redis p50 <= 0.5 ms, p99 <= 2 ms), and writes the JSON results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import queue
import secrets
import statistics
import sys
import threading
import time
import urllib.request
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from ._harness import (
    Result,
    Uvicorn,
    client_process,
    common_args,
    paced,
    percentile,
    redis_server,
    stop,
)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

MODULE = "bench.bench_latency"
CASES = ("relay", "ours-redis", "ours-memory")
BASELINE = "relay"
LABELS = {
    "relay": "hand-rolled Redis Pub/Sub relay",
    "ours-redis": "streaming_mw, Redis (worker process)",
    "ours-memory": "streaming_mw, memory (in-server publisher)",
}
ROLES = ("reader", "relay-publisher", "ours-publisher")
TARGET_P50_MS = 0.5
TARGET_P99_MS = 2.0
SERVER_START = 120.0
"""Seconds a server may take to listen (imports are slow while other processes load the CPUs)."""
THREAD_MODES = ("memory", "redis")
THREAD_TARGET_P50 = 1.5
THREAD_TARGET_P99 = 2.0
THREAD_LABELS = {
    "floor": "floor: a hand-written relay from a thread",
    "ours": "streaming_mw: sse_response, sync worker thread",
}
SUBSCRIBED = b": subscribed"
DATA = b"data: "


# the client: one process reading every stream ---------------------------------------------------


class _Reader:
    """What the connections of one client process share: readiness, completion, latencies."""

    def __init__(self, streams: int, loop: asyncio.AbstractEventLoop) -> None:
        self.latencies = array("q")
        self.reads = array("q")
        self.first_read = 0
        self.last_read = 0
        self.closing = False
        self._not_ready = streams
        self._not_done = streams
        self.ready: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def stream_ready(self) -> None:
        self._not_ready -= 1
        if not self._not_ready and not self.ready.done():
            self.ready.set_result(None)

    def stream_done(self) -> None:
        self._not_done -= 1
        if not self._not_done and not self.finished.done():
            self.finished.set_result(None)

    def fail(self, message: str) -> None:
        for future in (self.ready, self.finished):
            if not future.done():
                future.set_exception(RuntimeError(message))


class _SSEConnection(asyncio.Protocol):
    """One ``GET`` of an SSE stream: headers, chunked transfer coding, ``data:`` lines."""

    def __init__(
        self, reader: _Reader, port: int, path: str, events: int, marker: bytes | None
    ) -> None:
        self.reader = reader
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        self.path = path
        self.events = events
        self.marker = marker  # the line that says "subscribed" (None: the headers say it)
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.raw = bytearray()
        self.left = 0  # bytes of the current chunk still to come
        self.crlf = 0  # bytes of the CRLF after a chunk still to skip
        self.chunked_end = False
        self.text = bytearray()
        self.is_ready = False
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()  # first thing: the read is what is measured
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end])
            data = bytes(self.head[end + 4 :])
            self.in_body = True
            status = head.split(b"\r\n", 1)[0].split()
            if len(status) < 2 or status[1] != b"200":
                self.reader.fail(f"GET {self.path}: {(head + data).decode(errors='replace')}")
                return
            self.chunked = b"\r\ntransfer-encoding: chunked" in head.lower()
            if self.marker is None:
                self._ready()
        body = self._dechunk(data) if self.chunked else data
        if not body:
            return
        text = self.text
        text += body
        cut = text.rfind(b"\n")
        if cut < 0:
            return
        lines = bytes(text[:cut]).split(b"\n")
        del text[: cut + 1]
        for line in lines:
            if line.startswith(DATA):
                self._event(line[len(DATA) :], now)
            elif line == self.marker and not self.is_ready:
                self._ready()

    def _ready(self) -> None:
        self.is_ready = True
        self.reader.stream_ready()

    def _dechunk(self, data: bytes) -> bytes:
        if self.chunked_end:
            return b""
        raw = self.raw
        raw += data
        out = bytearray()
        pos, size = 0, len(raw)
        while pos < size:
            if self.left:
                take = min(self.left, size - pos)
                out += raw[pos : pos + take]
                pos += take
                self.left -= take
                if not self.left:
                    self.crlf = 2
            elif self.crlf:
                take = min(self.crlf, size - pos)
                pos += take
                self.crlf -= take
            else:
                end = raw.find(b"\r\n", pos)
                if end < 0:
                    break
                self.left = int(bytes(raw[pos:end]).split(b";", 1)[0], 16)
                pos = end + 2
                if not self.left:  # the last chunk: the server ended the response
                    self.chunked_end = True
                    pos = size
        del raw[:pos]
        return bytes(out)

    def _event(self, payload: bytes, now: int) -> None:
        try:
            doc = orjson.loads(payload)
            if "success" in doc and "i" not in doc:
                return  # sse_response's terminal `complete`: not one of the timed events
            index = doc["i"]
        except (ValueError, TypeError, KeyError):
            self.reader.fail(f"GET {self.path}: not an event of this benchmark: {payload!r}")
            return
        if index != self.received:
            what = "more events than published" if index >= self.events else "lost or repeated"
            self.reader.fail(
                f"GET {self.path}: event {index} arrived after {self.received} events ({what})"
            )
            return
        self.received += 1
        reader = self.reader
        reader.latencies.append(now - doc["t"])
        reader.reads.append(now)
        reader.first_read = reader.first_read or now
        reader.last_read = now
        if self.received == self.events:
            reader.stream_done()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reader.closing:
            self.reader.fail(
                f"GET {self.path}: connection closed after {self.received} of {self.events} "
                f"events ({exc!r})"
            )


async def read_streams(config: dict[str, Any]) -> _Reader:
    """Connect to every stream, say ``ready``, read until every event came."""
    loop = asyncio.get_running_loop()
    paths: list[str] = config["paths"]
    port, events = int(config["port"]), int(config["events"])
    marker = SUBSCRIBED if config["marker"] else None
    reader = _Reader(len(paths), loop)
    transports: list[asyncio.Transport] = []
    try:
        for path in paths:
            connection = functools.partial(_SSEConnection, reader, port, path, events, marker)
            transport, _ = await loop.create_connection(connection, "127.0.0.1", port)
            transports.append(transport)
        await asyncio.wait_for(reader.ready, 60)
        print("ready", flush=True)
        await asyncio.wait_for(reader.finished, float(config["timeout"]))
    finally:
        reader.closing = True
        for opened in transports:
            opened.close()
    return reader


def summarize(reader: _Reader, dump: str | None) -> dict[str, Any]:
    """The reader's answer: percentiles, not every sample, go through the pipe."""
    if dump:  # raw figures, for looking at where the slow events are
        raw = {"latencies_ns": reader.latencies.tolist(), "reads_ns": reader.reads.tolist()}
        Path(dump).write_bytes(orjson.dumps(raw))
    latencies = sorted(reader.latencies)
    return {
        "events": len(latencies),
        "p50_ns": percentile(latencies, 0.50) if latencies else 0,
        "p99_ns": percentile(latencies, 0.99) if latencies else 0,
        "max_ns": latencies[-1] if latencies else 0,
        "seconds": (reader.last_read - reader.first_read) / 1e9,
    }


# the publishers: separate processes ------------------------------------------------------------


async def _go() -> None:
    """Say ``ready``, then wait for ``go`` on stdin."""
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


async def publish_relay(config: dict[str, Any]) -> dict[str, float]:
    """The baseline's publisher: ``PUBLISH relay:<stream>`` with redis-py's asyncio client."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(config["redis_url"])
    try:
        await client.ping()
        await _go()

        async def publish(stream_id: str, i: int) -> None:
            payload = orjson.dumps({"t": time.monotonic_ns(), "i": i})
            await client.publish(f"relay:{stream_id}", payload)

        return await paced(config["streams"], config["rate"], config["count"], publish)
    finally:
        await client.aclose()


async def publish_ours(config: dict[str, Any]) -> dict[str, float]:
    """A worker process's publisher, set up as `QueueWorker` sets itself up: its own container
    in Redis mode, the container's `AsyncStreamChannel`, one `StreamContext` per stream."""
    from streaming_mw import StreamContext, init_streaming
    from streaming_mw.runtime import StreamingContainer
    from streaming_mw.runtime.startup import start_container, stop_container

    container = StreamingContainer()
    init_streaming(config["redis_url"], mode="redis", container=container)
    await start_container(container)
    try:
        channel = container.stream_channel()
        contexts: dict[str, StreamContext] = {}
        for stream_id in config["streams"]:
            contexts[stream_id] = StreamContext(stream_id, channel)
            await contexts[stream_id].open()
        await _go()

        async def publish(stream_id: str, i: int) -> None:
            await contexts[stream_id].emit("progress", {"t": time.monotonic_ns(), "i": i})

        return await paced(config["streams"], config["rate"], config["count"], publish)
    finally:
        await stop_container(container)


def client_main(role: str) -> None:
    """``--client ROLE``: the JSON config on the first line of stdin, JSON result on stdout."""
    config = json.loads(sys.stdin.readline())
    if role == "reader":
        import uvloop

        gc.disable()  # the instrument must not pause: its garbage is freed by refcounts anyway
        result: dict[str, Any] = summarize(uvloop.run(read_streams(config)), config["dump"])
    elif role == "relay-publisher":
        result = asyncio.run(publish_relay(config))
    else:
        result = asyncio.run(publish_ours(config))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# the driver ------------------------------------------------------------------------------------


class _Child:
    """A ``--client`` process talking in lines: config in, ``ready`` / JSON out."""

    def __init__(self, role: str, config: dict[str, Any]) -> None:
        self.role = role
        self.process: subprocess.Popen[str] = client_process(MODULE, role)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.send(json.dumps(config))

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.role}: nothing after {timeout:.0f} s") from None
        if line is None:
            code = self.process.wait()
            raise RuntimeError(f"{self.role} exited with {code} (its stderr is above)")
        return line.strip()

    def result(self, timeout: float) -> dict[str, Any]:
        """The child's last line, its JSON answer."""
        line = self.expect(timeout)
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            code = self.process.wait(5)
            raise RuntimeError(
                f"{self.role}: {len(line)} characters that are not JSON, then exit {code}"
            ) from None
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@dataclass
class Sample:
    """One case's latency percentiles (ms) in one repetition, and the rates achieved."""

    p50: float
    p99: float
    max: float
    read_rate: float
    behind_ms: float | None


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(  # noqa: S310 (a local server we started)
        url, orjson.dumps(body), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        answer.read()


def run_case(
    case: str,
    server: Uvicorn,
    redis_url: str,
    streams: list[str],
    rate: float,
    count: int,
    dump: Path | None = None,
) -> Sample:
    """One measured run of ``case``: streams created, all followed, then published to."""
    timeout = 3 * count * len(streams) / rate + 30
    prefix = "/relay/" if case == "relay" else "/streams/"
    reader_config = {
        "port": server.port,
        "paths": [prefix + s for s in streams],
        "events": count,
        "marker": case == "relay",
        "timeout": timeout,
        "dump": None if dump is None else str(dump.resolve()),
    }
    publish = {"redis_url": redis_url, "streams": streams, "rate": rate, "count": count}
    children: list[_Child] = []
    try:
        publisher: _Child | None = None
        if case == "ours-memory":
            _post(server.base_url + "/create", {"streams": streams})
        else:
            role = "relay-publisher" if case == "relay" else "ours-publisher"
            publisher = _Child(role, publish)
            children.append(publisher)
            if publisher.expect(60) != "ready":
                raise RuntimeError(f"{role}: no 'ready'")
        reader = _Child("reader", reader_config)
        children.append(reader)
        if reader.expect(90) != "ready":
            raise RuntimeError("reader: no 'ready'")
        behind: float | None = None
        if publisher is None:
            _post(server.base_url + "/emit", {**publish, "create": False})
        else:
            publisher.send("go")
            behind = float(publisher.result(timeout)["max_behind_ms"])
        read = reader.result(timeout)
    finally:
        for child in children:
            child.close()
    events = int(read["events"])
    if events != count * len(streams):  # the reader checks each stream; belt and braces
        raise RuntimeError(f"{case}: {events} events read, {count * len(streams)} sent")
    seconds = float(read["seconds"])
    return Sample(
        read["p50_ns"] / 1e6,
        read["p99_ns"] / 1e6,
        read["max_ns"] / 1e6,
        events / seconds if seconds else 0.0,
        behind,
    )


@dataclass
class ThreadRun:
    """The in-process case's options: streams, events per stream, seconds between events."""

    streams: int
    events: int
    interval: float


def run_thread_case(
    kind: str, mode: str, server: Uvicorn, options: ThreadRun, dump: Path | None = None
) -> Sample:
    """The seed's pattern (``kind`` ``ours``) or its floor, ``mode`` memory or redis: the client
    opens every stream (each starts its worker thread), then ``POST /go`` starts them all."""
    run = secrets.token_hex(4)
    query = f"?events={options.events}&interval={options.interval}&streams={options.streams}"
    prefix = f"/deploy-thread/{run}/" if kind == "ours" else f"/floor/{mode}/{run}/"
    seconds = options.events * options.interval
    timeout = 3 * seconds + 30
    reader = _Child(
        "reader",
        {
            "port": server.port,
            "paths": [f"{prefix}{j}{query}" for j in range(options.streams)],
            "events": options.events,
            "marker": kind == "floor",  # ours answers once its follower is subscribed
            "timeout": timeout,
            "dump": None if dump is None else str(dump.resolve()),
        },
    )
    try:
        if reader.expect(90) != "ready":
            raise RuntimeError("reader: no 'ready'")
        _post(f"{server.base_url}/go/{run}", {})
        read = reader.result(timeout)
    finally:
        reader.close()
    events = int(read["events"])
    if events != options.events * options.streams:
        raise RuntimeError(f"{kind}-{mode}: {events} events read")
    took = float(read["seconds"])
    return Sample(
        read["p50_ns"] / 1e6, read["p99_ns"] / 1e6, read["max_ns"] / 1e6, events / took, None
    )


def measure_threads(
    servers: dict[str, Uvicorn], options: ThreadRun, rounds: int, dump: Path | None
) -> dict[tuple[str, str], list[Sample]]:
    """``rounds`` interleaved rounds (after one warm-up) of floor and ours, memory and Redis."""
    samples: dict[tuple[str, str], list[Sample]] = {}
    for name in ["warm-up", *(f"r{n}" for n in range(rounds))]:
        for mode in THREAD_MODES:
            kinds = ("floor", "ours") if len(samples) % 4 == 0 else ("ours", "floor")
            for kind in kinds:
                server = servers["floor" if kind == "floor" else f"ours-{mode}"]
                where = None if dump is None else dump / f"thread-{kind}-{mode}-{name}.json"
                sample = run_thread_case(kind, mode, server, options, where)
                print(
                    f"{name} thread {kind}-{mode}: p50 {sample.p50:.3f} ms, p99 "
                    f"{sample.p99:.3f} ms, max {sample.max:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
                if name != "warm-up":
                    samples.setdefault((kind, mode), []).append(sample)
    return samples


def report_threads(
    result: Result, samples: dict[tuple[str, str], list[Sample]], options: ThreadRun
) -> None:
    """Tables per mode (floor as the baseline), ours / floor per round, the targets."""
    for mode in THREAD_MODES:
        for measure in ("p50", "p99"):
            table = result.table(
                f"sync worker thread in the web process, {mode}: {measure} latency",
                "ms",
                higher_is_better=False,
                baseline="floor",
            )
            for kind in ("floor", "ours"):
                values = [getattr(s, measure) for s in samples[(kind, mode)]]
                table.add(kind, f"{THREAD_LABELS[kind]} ({mode})", values)
    ratios = result.table(
        "sync worker thread: ours / floor, per round", "x", higher_is_better=False
    )
    for mode in THREAD_MODES:
        ours, floor = samples[("ours", mode)], samples[("floor", mode)]
        for measure, wanted in (("p50", THREAD_TARGET_P50), ("p99", THREAD_TARGET_P99)):
            values = [
                getattr(o, measure) / getattr(f, measure) for o, f in zip(ours, floor, strict=True)
            ]
            ratios.add(f"{mode}-{measure}", f"{mode}, {measure}", values)
            median = statistics.median(values)
            absolute = statistics.median(getattr(o, measure) for o in ours)
            base = statistics.median(getattr(f, measure) for f in floor)
            result.target(
                f"sync worker thread, {mode}: ours / floor {measure}",
                f"<= {wanted:g}x",
                f"{median:.2f}x (min {min(values):.2f}, max {max(values):.2f}; ours "
                f"{absolute:.3f} ms, floor {base:.3f} ms, medians of {len(values)} rounds)",
                median <= wanted,
            )
    result.notes.append(
        f"Sync worker thread: {options.streams} streams x {options.events} events, "
        f"{options.interval * 1000:g} ms apart, per case and round; every stream's events "
        "arrived exactly once, in order."
    )


DESCRIPTION = """\
Publish → read latency of queue-based streams, through a real `redis-server`. Three uvicorn
servers run side by side (`bench/queue_apps.py`, uvloop + httptools): the hand-rolled relay
(one redis-py `PubSub` per request, the baseline), streaming_mw in Redis mode and streaming_mw
in memory mode. For the relay a separate publisher process sends `PUBLISH relay:<stream>`; for
streaming_mw/Redis a separate worker process publishes the way `QueueWorker` does — its own
container in Redis mode, `AsyncStreamChannel`, one `StreamContext` per stream, `await
ctx.emit("progress", {{"t": ..., "i": n}})`, i.e. one Lua script per event that `XADD`s to the
stream's history and `PUBLISH`es, and the server's one shared Pub/Sub connection fans it out;
in memory mode the publisher can only run inside the server process (`POST /emit`). A separate
client process (asyncio protocols on uvloop, raw sockets, garbage collector off) opens
{streams} streams and waits until all are connected before the publisher starts: {rate:,.0f}
events/s in total, round-robin over the streams, paced against a schedule, for {seconds:g} s —
{events:,} events per case and repetition. Each event carries `time.monotonic_ns()` taken just
before it is published; the client subtracts it from the same clock read when the bytes
arrive, and fails the run unless every stream's events arrive exactly once and in order.
Percentiles are nearest-rank over all {events:,} events of a repetition; the cases run
interleaved, {repeat} repetition(s) after {warmup}. The client, the servers, `redis-server` and
the publisher share the machine's cores, so the figures include their scheduling.

First, the seed's own pattern: `sse_response(emitter, worker, config)` with a sync worker in a
thread of the web process, {thread_streams} streams at once, each worker calling
`emitter.progress(..., t=time.monotonic_ns(), i=n)` {thread_events} times, {interval_ms:g} ms
apart (the streams staggered within the interval, all started together once every stream is
connected), measured when the client process has parsed the event. Beside it, the floor: the
least a hand-written relay needs for the same delivery (`floor` in `bench/queue_apps.py`) — in
memory a thread handing each event to the loop with `call_soon_threadsafe` into an
`asyncio.Queue` read by a `StreamingResponse`; with Redis a thread that `PUBLISH`es with a sync
client while the route reads one `redis.asyncio` Pub/Sub subscription. No history, resume or
lease. Floor and ours alternate, memory then Redis, in {thread_rounds} rounds after one warm-up
round; the ratio ours / floor is taken per round, its min / median / max reported."""


def main() -> None:
    parser = argparse.ArgumentParser(description="Queue-based delivery latency.")
    common_args(parser)
    parser.add_argument("--streams", type=int, default=100, help="streams followed at once")
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second in all")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per case")
    parser.add_argument(
        "--dump", type=Path, default=None, help="directory for each run's raw latencies (JSON)"
    )
    parser.add_argument(
        "--part",
        choices=("all", "process", "thread"),
        default="all",
        help="publisher processes, the sync worker thread case, or both",
    )
    parser.add_argument("--thread-streams", type=int, default=20, help="sync worker case streams")
    parser.add_argument("--thread-events", type=int, default=100, help="events per stream")
    parser.add_argument("--thread-interval", type=float, default=0.02, help="seconds apart")
    parser.add_argument("--thread-rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--client", choices=ROLES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client)
        return
    if args.quick:
        args.streams, args.rate, args.seconds, args.warmup, args.repeat = 10, 200.0, 1.0, 0.0, 1
        args.thread_streams, args.thread_events, args.thread_rounds = 4, 10, 1
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
    if args.repeat < 1 or args.streams < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--repeat, --streams, --rate and --seconds must be positive")
    count = max(1, round(args.rate * args.seconds / args.streams))
    warm_count = round(args.rate * args.warmup / args.streams)
    events = count * args.streams

    result = Result(
        "latency",
        "Queue-based delivery latency",
        DESCRIPTION.format(
            streams=args.streams,
            rate=args.rate,
            seconds=args.seconds,
            events=events,
            repeat=args.repeat,
            warmup=f"a {args.warmup:g} s warm-up of each" if warm_count else "no warm-up",
            thread_streams=args.thread_streams,
            thread_events=args.thread_events,
            interval_ms=args.thread_interval * 1000,
            thread_rounds=args.thread_rounds,
        ),
    )
    samples: dict[str, list[Sample]] = {case: [] for case in CASES}
    threads = ThreadRun(args.thread_streams, args.thread_events, args.thread_interval)
    thread_samples: dict[tuple[str, str], list[Sample]] = {}
    load_before = os.getloadavg()[0]
    with redis_server() as redis_url:
        servers = {
            "relay": Uvicorn("bench.queue_apps:relay", {"REDIS_URL": redis_url}),
            "ours-redis": Uvicorn(
                "bench.queue_apps:ours", {"STREAMING_MODE": "redis", "REDIS_URL": redis_url}
            ),
            "ours-memory": Uvicorn("bench.queue_apps:ours"),
            "floor": Uvicorn("bench.queue_apps:floor", {"REDIS_URL": redis_url}),
        }
        with _servers(*servers.values()):
            if args.part != "process":
                thread_samples = measure_threads(servers, threads, args.thread_rounds, args.dump)
            runs = [("warm-up", warm_count)] if warm_count else []
            runs += [(f"r{rep}", count) for rep in range(args.repeat)]
            if args.part == "thread":
                runs = []
            for name, per_stream in runs:
                for case in CASES:  # interleaved, so drift hits every case alike
                    tag = f"{name}-{secrets.token_hex(3)}"
                    streams = [f"lat-{tag}-{j}" for j in range(args.streams)]
                    dump = None if args.dump is None else args.dump / f"{case}-{name}.json"
                    sample = run_case(
                        case, servers[case], redis_url, streams, args.rate, per_stream, dump
                    )
                    print(
                        f"{name} {case}: p50 {sample.p50:.3f} ms, p99 {sample.p99:.3f} ms, "
                        f"max {sample.max:.2f} ms, {sample.read_rate:,.0f} events/s read",
                        file=sys.stderr,
                        flush=True,
                    )
                    if name != "warm-up":
                        samples[case].append(sample)

    if thread_samples:
        report_threads(result, thread_samples, threads)
    if runs_done(samples):
        report_processes(result, samples, args, events)
    result.notes.append(
        f"Load average (1 min) {load_before:.2f} before the run and {os.getloadavg()[0]:.2f} "
        f"after it, on {os.cpu_count()} cores: whatever else runs on the machine shows up in "
        "the p99 and max columns."
    )
    result.save(args.output)


@contextlib.contextmanager
def _servers(*servers: Uvicorn) -> Iterator[None]:
    """`uvicorn_servers`, with the time four of them need to import on a loaded machine."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait(SERVER_START)
        yield
    finally:
        stop([s.process for s in servers if s.process is not None])


def runs_done(samples: dict[str, list[Sample]]) -> bool:
    return all(samples.values())


def report_processes(
    result: Result, samples: dict[str, list[Sample]], args: argparse.Namespace, events: int
) -> None:
    """The publisher-process cases: tables, the absolute targets, notes."""
    tables = {
        "p50": result.table("p50 latency", "ms", higher_is_better=False, baseline=BASELINE),
        "p99": result.table("p99 latency", "ms", higher_is_better=False, baseline=BASELINE),
        "max": result.table("max latency", "ms", higher_is_better=False, baseline=BASELINE),
    }
    for case in CASES:
        runs_of = samples[case]
        tables["p50"].add(case, LABELS[case], [s.p50 for s in runs_of])
        tables["p99"].add(case, LABELS[case], [s.p99 for s in runs_of])
        tables["max"].add(case, LABELS[case], [s.max for s in runs_of])

    p50 = tables["p50"].row("ours-redis")["median"]
    p99 = tables["p99"].row("ours-redis")["median"]
    result.target(
        "ours-redis p50 latency",
        f"<= {TARGET_P50_MS} ms",
        f"{p50:.3f} ms (median of {args.repeat})",
        p50 <= TARGET_P50_MS,
    )
    result.target(
        "ours-redis p99 latency",
        f"<= {TARGET_P99_MS} ms",
        f"{p99:.3f} ms (median of {args.repeat})",
        p99 <= TARGET_P99_MS,
    )
    memory_p50 = tables["p50"].row("ours-memory")["median"]
    memory_p99 = tables["p99"].row("ours-memory")["median"]
    result.notes.append(
        f"Memory mode (publisher inside the server process): p50 {memory_p50:.3f} ms "
        f"({'within' if memory_p50 <= TARGET_P50_MS else 'over'} the {TARGET_P50_MS} ms "
        f"target), p99 {memory_p99:.3f} ms ({'within' if memory_p99 <= TARGET_P99_MS else 'over'}"
        f" the {TARGET_P99_MS} ms target), medians over repetitions."
    )
    for case in CASES:
        rates = [s.read_rate for s in samples[case]]
        behind = [s.behind_ms for s in samples[case] if s.behind_ms is not None]
        lag = f"; publisher at most {max(behind):.1f} ms behind its schedule" if behind else ""
        result.notes.append(
            f"{case}: {events:,} events per repetition, all delivered exactly once, in order; "
            f"read at {statistics.median(rates):,.0f} events/s (median){lag}."
        )


if __name__ == "__main__":
    main()
