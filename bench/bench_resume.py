"""Resume: time to first event and replay throughput of a 10,000-event stream read from its start.

A real ``redis-server`` and two uvicorn servers of the ``ours`` app (``bench/queue_apps.py``)
are started: one in Redis mode, one in memory mode. The Redis stream is filled from this
process through `SyncRedisChannel` (10,000 ``progress`` events, one ``publish`` each); the
memory stream by ``POST /emit`` inside its server. Both streams stay running (no terminal
event), as when a client reconnects to a job still in progress, so the 10,000 events are
exactly the retained history (``ChannelConfig.history_size``).

A client process (not the driver) then opens fresh HTTP/1.1 connections to
``GET /streams/<id>`` with ``Last-Event-ID: <epoch>-0`` (the cursor before the first event),
times request → first event bytes and request → event 10,000, checks every id is
``<epoch>-1`` … ``<epoch>-10000`` in order with no ``reset``, and closes. Same with no
``Last-Event-ID`` (a first visit). The baseline, measured in the same client and run: the same
history read straight from Redis with ``XRANGE`` in pages of 500 (the page size the library's
`Follower` uses) on a fresh connection, the floor for any relay with resume.

Run: python -m bench.bench_resume [--repeat 3] [--reads 10] [--events 10000] [--quick]
[--output bench/results/resume.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import re
import time
from typing import TYPE_CHECKING, Any

import h11
import redis
import redis.asyncio as aioredis
import uvloop

from streaming_mw import StreamEvent
from streaming_mw.channels.redis import StreamKeys, SyncRedisChannel
from streaming_mw.config import ChannelConfig

from ._harness import Result, Uvicorn, common_args, redis_server, run_client, uvicorn_servers

if TYPE_CHECKING:
    from collections.abc import Awaitable

MODULE = "bench.bench_resume"
STREAM = "resume-bench"
PAGE = 500
"""Events per history read: the page size of `Follower` (``streaming_mw.channels.stream``)."""
CASES = ("xrange", "redis_resume", "redis_fresh", "memory_resume")
BASELINE = "xrange"
TARGET_CASE = "redis_resume"
TARGET_MS = 100.0
LABELS = {
    "xrange": "XRANGE pages of 500 straight from Redis (baseline)",
    "redis_resume": "streaming_mw, Redis, Last-Event-ID: <epoch>-0",
    "redis_fresh": "streaming_mw, Redis, no Last-Event-ID",
    "memory_resume": "streaming_mw, memory, Last-Event-ID: <epoch>-0",
}
ID_LINE = re.compile(rb"^id: ([0-9a-z]+)-([0-9]+)$", re.MULTILINE)
READ_TIMEOUT = 60.0


def new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop()


# client (runs in its own process) -------------------------------------------------------------


class IdCheck:
    """Checks that ids arrive as ``<epoch>-1``, ``<epoch>-2`` … with nothing missing."""

    def __init__(self, epoch: str | None) -> None:
        self.epoch = epoch
        self.last = 0

    def take(self, epoch: str, seq: int) -> None:
        if self.epoch is None:
            self.epoch = epoch
        if epoch != self.epoch or seq != self.last + 1:
            raise RuntimeError(f"got {epoch}-{seq} after {self.epoch}-{self.last}")
        self.last = seq


async def read_sse(
    port: int, last_event_id: str | None, events: int, epoch: str | None
) -> tuple[float, float, str]:
    """Follow the stream over a fresh connection until event ``events``; (ttfb s, total s,
    epoch)."""
    headers = [("Host", "bench"), ("Accept", "text/event-stream")]
    if last_event_id is not None:
        headers.append(("Last-Event-ID", last_event_id))
    conn = h11.Connection(our_role=h11.CLIENT)
    request = conn.send(h11.Request(method="GET", target=f"/streams/{STREAM}", headers=headers))
    check = IdCheck(epoch)
    buffer = b""
    first = 0.0
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request + conn.send(h11.EndOfMessage()))
        while check.last < events:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await reader.read(65536)
                conn.receive_data(chunk)  # b"" is EOF: next_event then raises or ends
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise RuntimeError(f"GET /streams/{STREAM}: status {event.status_code}")
            elif isinstance(event, h11.Data):
                buffer += event.data
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                frames, buffer = buffer[: end + 2], buffer[end + 2 :]
                if not first:
                    first = time.perf_counter()
                if b"event: reset" in frames:
                    raise RuntimeError(f"unexpected reset: {frames[:300]!r}")
                for raw_epoch, raw_seq in ID_LINE.findall(frames):
                    check.take(raw_epoch.decode(), int(raw_seq))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise RuntimeError(f"stream ended after event {check.last} of {events}")
        total = time.perf_counter() - start
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert check.epoch is not None
    return first - start, total, check.epoch


async def read_xrange(url: str, events: int) -> tuple[float, float]:
    """The baseline: read the history in pages straight from Redis on a fresh connection."""
    key = StreamKeys(ChannelConfig().key_prefix, STREAM).events
    check = IdCheck("")
    first = 0.0
    start = time.perf_counter()
    client = aioredis.Redis.from_url(url)
    try:
        while check.last < events:
            low = f"({check.last}-0" if check.last else "-"
            page: Any = await client.xrange(key, min=low, count=PAGE)
            if not first:
                first = time.perf_counter()
            if not page:
                raise RuntimeError(f"history ends after event {check.last} of {events}")
            for entry_id, fields in page:
                if b"e" not in fields:
                    raise RuntimeError(f"entry {entry_id!r} has no payload")
                check.take("", int(entry_id.partition(b"-")[0]))
        total = time.perf_counter() - start
    finally:
        await client.aclose()
    return first - start, total


async def within(step: Awaitable[Any]) -> Any:
    async with asyncio.timeout(READ_TIMEOUT):
        return await step


async def measure(
    ports: dict[str, int], url: str, epochs: dict[str, str], events: int, reads: int
) -> dict[str, dict[str, list[float]]]:
    """``reads`` fresh reads of every case, interleaved; ms to first event and events/s."""
    samples: dict[str, dict[str, list[float]]] = {c: {"ttfb": [], "rate": []} for c in CASES}
    for _ in range(reads):
        for case in CASES:
            if case == BASELINE:
                ttfb, total = await within(read_xrange(url, events))
            else:
                mode = case.partition("_")[0]
                cursor = f"{epochs[mode]}-0" if case.endswith("resume") else None
                ttfb, total, _ = await within(read_sse(ports[mode], cursor, events, epochs[mode]))
            samples[case]["ttfb"].append(ttfb * 1000)
            samples[case]["rate"].append(events / total)
            await asyncio.sleep(0.05)  # let the server finish with the closed connection
    return samples


async def warm_up(ports: dict[str, int], events: int) -> dict[str, str]:
    """Read both streams to the end once (the memory one may still be filling); their epochs."""
    epochs: dict[str, str] = {}
    for mode, port in ports.items():
        *_, epochs[mode] = await within(read_sse(port, None, events, None))
    return epochs


def client_main(argv: list[str]) -> None:
    kind, redis_port, memory_port, url, events, *rest = argv
    ports = {"redis": int(redis_port), "memory": int(memory_port)}
    with asyncio.Runner(loop_factory=new_loop) as runner:
        if kind == "warmup":
            print(json.dumps(runner.run(warm_up(ports, int(events)))))
        elif kind == "measure":
            epochs = {"redis": rest[0], "memory": rest[1]}
            reads = int(rest[2])
            print(json.dumps(runner.run(measure(ports, url, epochs, int(events), reads))))
        else:
            raise SystemExit(f"unknown client kind {kind!r}")


# driver ---------------------------------------------------------------------------------------


def fill_redis(url: str, events: int) -> tuple[str, float]:
    """Create the stream and publish ``events`` progress events; (epoch, events/s)."""
    client = redis.Redis.from_url(url)
    try:
        channel = SyncRedisChannel(client)
        epoch = channel.create(STREAM).epoch
        start = time.perf_counter()
        for i in range(events):
            channel.publish(STREAM, StreamEvent("progress", {"t": time.monotonic_ns(), "i": i}))
        return epoch, events / (time.perf_counter() - start)
    finally:
        client.close()


def fill_memory(server: Uvicorn, events: int) -> None:
    """Start the in-server publisher of ``events`` events, as fast as it goes."""
    body = json.dumps({"streams": [STREAM], "rate": 1e9, "count": events})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/emit", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"POST /emit: {response.status} {response.read()!r}")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    common_args(parser)
    parser.add_argument("--events", type=int, default=10_000, help="events in the stream")
    parser.add_argument("--reads", type=int, default=10, help="fresh reads per case per repetition")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client)
        return
    repeat, reads, events = args.repeat, args.reads, args.events
    if args.quick:
        repeat, reads, events = 1, 1, 1_000
    history = ChannelConfig().history_size
    if events > history:
        raise SystemExit(f"--events must be <= history_size ({history}) to resume from the start")

    result = Result(
        "resume",
        f"Resume: a {events:,}-event stream replayed from its start",
        DESCRIPTION.format(events=events, repeat=repeat, reads=reads, page=PAGE),
    )
    samples: dict[str, dict[str, list[float]]] = {c: {"ttfb": [], "rate": []} for c in CASES}
    with redis_server() as url:
        servers = (
            Uvicorn("bench.queue_apps:ours", env={"STREAMING_MODE": "redis", "REDIS_URL": url}),
            Uvicorn("bench.queue_apps:ours"),
        )
        with uvicorn_servers(*servers) as (redis_app, memory_app):
            fill_memory(memory_app, events)
            epoch, fill_rate = fill_redis(url, events)
            ports = (redis_app.port, memory_app.port)
            epochs = run_client(MODULE, "warmup", *ports, url, events, timeout=120)
            if epochs["redis"] != epoch:
                raise RuntimeError(f"served epoch {epochs['redis']}, created {epoch}")
            for _ in range(repeat):
                args_ = ("measure", *ports, url, events, epochs["redis"], epochs["memory"], reads)
                sample = run_client(MODULE, *args_, timeout=300)
                for case in CASES:
                    for measure_ in ("ttfb", "rate"):
                        samples[case][measure_] += sample[case][measure_]

    ttfb = result.table(
        f"Time to first event, resuming a {events:,}-event stream from its start",
        "ms",
        higher_is_better=False,
        baseline=BASELINE,
    )
    rate = result.table(
        f"Replay throughput: request to event {events:,}", "events/s", baseline=BASELINE
    )
    for case in CASES:
        ttfb.add(case, LABELS[case], samples[case]["ttfb"])
        rate.add(case, LABELS[case], samples[case]["rate"])
    median_ms = ttfb.row(TARGET_CASE)["median"]
    result.target(
        f"Time to first event resuming {events:,} events (Redis mode, median)",
        f"<= {TARGET_MS:g} ms",
        f"{median_ms:.1f} ms",
        median_ms <= TARGET_MS,
    )
    result.notes.append(
        f"Filling the Redis stream with SyncRedisChannel.publish (one round trip per event, "
        f"the public API has no pipelined publish) ran at {fill_rate:,.0f} events/s."
    )
    result.save(args.output)


DESCRIPTION = """\
A real `redis-server` and two uvicorn servers of the benchmark app (`StreamingMiddleware` + \
`stream_response`, `GET /streams/{{id}}`), one in Redis mode and one in memory mode. The Redis \
stream is filled with {events:,} `progress` events (about 75 bytes of JSON each) through \
`SyncRedisChannel.publish`, the memory stream by a publisher inside its server (`POST /emit`). \
Both stay running, without a terminal event, as when a client reconnects to a job still in \
progress, so the {events:,} events are exactly the retained history (`history_size` 10,000) \
and the follower goes live after the replay. A client process opens a fresh HTTP/1.1 \
connection with `Last-Event-ID: <epoch>-0` (the cursor before the first event) or with none, \
and measures time from before connecting to the first complete event frame (time to first \
event) and to event {events:,} (throughput = {events:,} / that time). It checks that the ids \
are `<epoch>-1` … `<epoch>-{events}` in order, none missing and no `reset`, then disconnects. \
Baseline in the same client and run: the same history read straight from Redis with `XRANGE` \
in pages of {page} (the page size the library's `Follower` uses) over a fresh connection, the \
floor for a hand-rolled relay with resume (it neither parses nor frames the events). Each \
repetition is one client process doing {reads} fresh reads of every case, interleaved; \
min / median / max are over all {repeat} x {reads} reads. The servers are warmed up by one \
full read each first.
"""


if __name__ == "__main__":
    main()
