"""Per-hop timestamps of the seed's pattern (a sync worker thread publishing through
`sse_response`), for diagnosis only: where the time between ``emitter.progress(...)`` and the
client's read goes.

Run: python -m bench.queue_hops [--mode memory|redis] [--streams 20] [--events 300]
[--no-freeze] [--floor] [--common]

Starts ``bench.queue_apps:ours`` with ``BENCH_HOPS=1`` (which wraps the hops below in the
server), runs the sync worker case of ``bench.bench_latency`` against it, and prints, for each
hop, the median and p99 time since the worker's timestamp ``t`` (ms):

- ``sending``: the worker thread starts its own append (Redis: a synchronous client);
- ``replied``: that append's answer came back to the thread;
- ``returned``: ``emitter.progress(...)`` returned to the worker;
- ``loop``: the event loop runs the worker thread's publish callback (when the thread cannot
  append itself);
- ``task``: the publish task started (when the backend cannot append at once: Redis);
- ``appended``: the append's answer came back to that task (Redis);
- ``arrived``: the fan-out's reader has the Pub/Sub message (Redis);
- ``queued``: the follower's queue got the notification (Redis: after the Pub/Sub read);
- ``follower``: the follower handed the event to its response (`Follower.next`), or took it
  live for a waiting response (`Follower.offer`);
- ``written``: the response's ``send`` of the frame returned (the bytes are in the socket),
  from its task or from the loop callback that writes live events (`WriteBatch`);
- ``read``: the client process parsed the event (the figure ``bench_latency`` reports).

``--floor`` also times the floor relay (``bench.queue_apps:floor``) the same way. These hops
are marked in both, at the same places in redis-py, asyncio and uvicorn:

- ``sending`` / ``replied`` (the floor: around its ``PUBLISH``);
- ``wire`` / ``wired``: the worker thread's command is handed to the socket / has been (redis-py's
  ``send_packed_command``: what Python ran before the command left, and the send itself);
- ``feed``: the Pub/Sub message's bytes reached the reader's ``asyncio.StreamReader``;
- ``parsed``: redis-py's ``PubSub.handle_message`` has it;
- ``send`` / ``sent``: uvicorn's ``send`` of the frame began / returned.

``--common`` marks only these shared hops in ours too: the others parse each event again, which
slows ours by a few tens of microseconds.

It also lists the server's garbage collections during the run, per generation (count and
longest pause). ``--no-freeze`` keeps the server from freezing its startup heap
(`ChannelConfig.freeze_startup_heap`), to see what a full collection costs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import threading
import time
import urllib.request
from collections import defaultdict
from typing import Any

import orjson

HOPS = (
    "sending",
    "wire",
    "wired",
    "replied",
    "returned",
    "loop",
    "task",
    "appended",
    "arrived",
    "queued",
    "follower",
    "feed",
    "parsed",
    "send",
    "written",
    "sent",
)
_marks: dict[str, list[int]] = defaultdict(list)


_T = re.compile(rb'"t":(\d+)')


def _mark_bytes(hop: str, data: bytes, now: int) -> None:
    for found in _T.finditer(data):
        _marks[hop].append(now - int(found.group(1)))


def install_common() -> None:
    """Wrap the hops that ours and the floor share (in the server process)."""
    import redis
    from redis.asyncio.client import PubSub
    from uvicorn.protocols.http import h11_impl, httptools_impl

    feed_data = asyncio.StreamReader.feed_data

    def fed(self: asyncio.StreamReader, data: bytes) -> None:
        _mark_bytes("feed", data, time.monotonic_ns())
        feed_data(self, data)

    asyncio.StreamReader.feed_data = fed  # type: ignore[method-assign,assignment]
    handle_message: Any = PubSub.handle_message

    async def handled(self: PubSub, response: Any, ignore: bool = False) -> Any:
        if isinstance(response, list) and response and isinstance(response[-1], bytes):
            _mark_bytes("parsed", response[-1], time.monotonic_ns())
        return await handle_message(self, response, ignore)

    PubSub.handle_message = handled  # type: ignore[method-assign]
    for module in (httptools_impl, h11_impl):
        cycle: Any = module.RequestResponseCycle
        _wrap_send(cycle)
    publish = redis.Redis.publish

    def published(self: redis.Redis, channel: Any, message: Any, **kwargs: Any) -> Any:
        sent = time.monotonic_ns()
        answer = publish(self, channel, message, **kwargs)
        if isinstance(message, bytes) and (found := _T.search(message)):
            _marks["sending"].append(sent - int(found.group(1)))
            _marks["replied"].append(time.monotonic_ns() - int(found.group(1)))
        return answer

    redis.Redis.publish = published  # type: ignore[method-assign,assignment]
    from redis.connection import AbstractConnection

    send_packed: Any = AbstractConnection.send_packed_command

    def on_wire(self: Any, command: Any, check_health: bool = True) -> None:
        parts = [command] if isinstance(command, bytes | str) else list(command)
        packed = b"".join(bytes(part) for part in parts if isinstance(part, bytes | memoryview))
        _mark_bytes("wire", packed, time.monotonic_ns())
        send_packed(self, command, check_health)
        _mark_bytes("wired", packed, time.monotonic_ns())

    AbstractConnection.send_packed_command = on_wire  # type: ignore[method-assign]


def _wrap_send(cycle: Any) -> None:
    send = cycle.send

    async def timed(self: Any, message: Any) -> None:
        body = message.get("body", b"") if message.get("type") == "http.response.body" else b""
        if body:
            _mark_bytes("send", body, time.monotonic_ns())
        await send(self, message)
        if body:
            _mark_bytes("sent", body, time.monotonic_ns())

    cycle.send = timed


def install() -> None:
    """Wrap the hops (in the server process)."""
    import gc

    install_common()
    if os.environ.get("BENCH_HOPS_COMMON"):
        return

    from streaming_mw.runtime import heap

    if os.environ.get("BENCH_NO_FREEZE"):
        heap._frozen = True  # as if done: the startup heap stays in full collections
    began = [0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter_ns()
        else:
            _marks[f"gc{info['generation']}"].append(time.perf_counter_ns() - began[0])

    gc.callbacks.append(collected)
    from streaming_mw import emitters
    from streaming_mw.channels import base, stream
    from streaming_mw.web import responses

    def mark(hop: str, data: Any) -> None:
        if isinstance(data, dict) and "t" in data:
            _marks[hop].append(time.monotonic_ns() - int(data["t"]))

    from streaming_mw.channels import redis as redis_channels

    thread_append = redis_channels.SyncRedisChannel.append

    def append(self: Any, stream_id: str, payload: bytes, **options: Any) -> int:
        sent = time.monotonic_ns()
        seq = thread_append(self, stream_id, payload, **options)
        replied = time.monotonic_ns()
        data = orjson.loads(payload).get("d")
        if isinstance(data, dict) and "t" in data:
            _marks["sending"].append(sent - int(data["t"]))
            _marks["replied"].append(replied - int(data["t"]))
        return seq

    redis_channels.SyncRedisChannel.append = append  # type: ignore[method-assign]

    progress = emitters.SSEEmitter.progress

    def progressed(self: Any, percent: float, step: str | None = None, **fields: Any) -> Any:
        published = progress(self, percent, step, **fields)
        returned = time.monotonic_ns()
        if "t" in fields and threading.current_thread() is not threading.main_thread():
            _marks["returned"].append(returned - int(fields["t"]))
        return published

    emitters.SSEEmitter.progress = progressed  # type: ignore[method-assign]

    from streaming_mw.channels import fanout

    dispatch = fanout.RedisFanout._dispatch

    def arrived(self: Any, message: dict[str, object]) -> None:
        now = time.monotonic_ns()
        data = message.get("data")
        if message.get("type") == "message" and isinstance(data, bytes):
            body = orjson.loads(data.split(b" ", 2)[2]).get("d")
            if isinstance(body, dict) and "t" in body:
                _marks["arrived"].append(now - int(body["t"]))
        dispatch(self, message)

    fanout.RedisFanout._dispatch = arrived  # type: ignore[method-assign]

    soon = emitters.SSEEmitter._publish_soon

    def publish_soon(self: Any, handoff: Any, chan: Any, lock: Any, event: Any, *rest: Any) -> None:
        mark("loop", event.data)
        soon(self, handoff, chan, lock, event, *rest)

    publish = emitters.SSEEmitter._publish

    async def publish_task(self: Any, channel: Any, lock: Any, event: Any, *rest: Any) -> Any:
        mark("task", event.data)
        published = await publish(self, channel, lock, event, *rest)
        mark("appended", event.data)
        return published

    deliver = base.QueueSubscription.deliver

    def delivered(self: Any, item: Any) -> None:
        if isinstance(item, base.Notice):
            mark("queued", orjson.loads(item.payload).get("d"))
        deliver(self, item)

    follower_next = stream.Follower.next

    async def next_event(self: Any, wait: float | None) -> Any:
        event = await follower_next(self, wait)
        if event is not None:
            mark("follower", event.data)
        return event

    send_batch = responses.EventStreamResponse._send_batch

    async def sent(self: Any, send: Any, event: Any) -> bool:
        done = await send_batch(self, send, event)
        mark("written", event.data)
        return done

    offer = stream.Follower.offer

    def offered(self: Any, notice: Any) -> Any:
        taken = offer(self, notice)
        if taken is not None:
            mark("follower", taken[0].data)
        return taken

    from streaming_mw.web import coalesce

    write_soon = coalesce.WriteBatch._write_soon

    def written_soon(self: Any) -> None:
        kept = [line for chunk in self._chunks for line in chunk.split(b"\n")]
        write_soon(self)
        for line in kept:
            if line.startswith(b"data: "):
                mark("written", orjson.loads(line[6:]))

    stream.Follower.offer = offered  # type: ignore[method-assign]
    coalesce.WriteBatch._write_soon = written_soon  # type: ignore[method-assign]
    emitters.SSEEmitter._publish_soon = publish_soon  # type: ignore[method-assign,assignment]
    emitters.SSEEmitter._publish = publish_task  # type: ignore[method-assign,assignment]
    base.QueueSubscription.deliver = delivered  # type: ignore[method-assign]
    stream.Follower.next = next_event  # type: ignore[method-assign]
    responses.EventStreamResponse._send_batch = sent  # type: ignore[method-assign]


def marks() -> dict[str, list[int]]:
    """The recorded hops, emptied."""
    taken = {hop: list(values) for hop, values in _marks.items()}
    _marks.clear()
    return taken


def _timed(kind: str, mode: str, args: argparse.Namespace, redis_url: str) -> Any:
    """One server of ``kind`` (ours or floor): a warm-up run, then the timed one, and its hops."""
    from ._harness import Uvicorn
    from .bench_latency import ThreadRun, _servers, run_thread_case

    env = {"BENCH_HOPS": "1", "REDIS_URL": redis_url}
    if args.no_freeze:
        env["BENCH_NO_FREEZE"] = "1"
    if args.common:
        env["BENCH_HOPS_COMMON"] = "1"
    if mode == "redis":
        env["STREAMING_MODE"] = "redis"
    server = Uvicorn(f"bench.queue_apps:{kind}", env)
    with _servers(server):
        run_thread_case(kind, mode, server, ThreadRun(args.streams, 10, 0.02))
        with urllib.request.urlopen(server.base_url + "/hops", timeout=30):  # noqa: S310
            pass  # the warm-up's marks, dropped
        sample = run_thread_case(kind, mode, server, ThreadRun(args.streams, args.events, 0.02))
        with urllib.request.urlopen(server.base_url + "/hops", timeout=30) as answer:  # noqa: S310
            hops: dict[str, list[int]] = orjson.loads(answer.read())
    return sample, hops


def main() -> None:
    from ._harness import percentile, redis_server

    parser = argparse.ArgumentParser(description="Per-hop times of the sync worker case.")
    parser.add_argument("--mode", choices=("memory", "redis"), default="memory")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--no-freeze", action="store_true", help="keep the startup heap in")
    parser.add_argument("--floor", action="store_true", help="time the floor relay too")
    parser.add_argument(
        "--common", action="store_true", help="only the hops ours shares with the floor"
    )
    args = parser.parse_args()
    kinds = ("ours", "floor") if args.floor else ("ours",)
    with redis_server() as url:
        runs = {kind: _timed(kind, args.mode, args, url) for kind in kinds}
    print(
        f"{args.mode}, {args.streams} streams x {args.events} events, load {os.getloadavg()[0]:.1f}"
    )
    for kind, (sample, hops) in runs.items():
        print(f"{kind}: median, p99 (ms since the worker's timestamp)")
        for hop in HOPS:
            values = sorted(hops.get(hop, []))
            if values:
                print(
                    f"  {hop:9} median {statistics.median(values) / 1e6:.3f} ms, "
                    f"p99 {percentile(values, 0.99) / 1e6:.3f} ms ({len(values)} events)"
                )
        print(f"  {'read':9} median {sample.p50:.3f} ms, p99 {sample.p99:.3f} ms")
        for generation in range(3):
            pauses = hops.get(f"gc{generation}", [])
            longest = f", longest {max(pauses) / 1e6:.2f} ms" if pauses else ""
            print(f"  garbage collections of generation {generation}: {len(pauses)}{longest}")


if __name__ == "__main__":
    main()
