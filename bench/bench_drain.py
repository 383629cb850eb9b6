"""Shutdown drain: time from SIGTERM to the exit of a uvicorn process serving N followers.

A uvicorn server of the ``ours`` app (``bench/queue_apps.py``, memory mode) creates one stream
(``POST /create``); a separate client process (uvloop, raw sockets) opens N followers of it
(``GET /streams/<id>``), waits until every response has started, and says so. The driver then
sends SIGTERM and times until the process has exited; meanwhile the client reads every follower
to its end and reports how many ended cleanly with a ``retry:`` hint (all of them, or the run
fails). No event is published: every follower is idle, the case a rolling deploy meets most.

Side by side with sse-starlette: one uvicorn process of an sse-starlette app with one idle
open stream (``idle_sse_starlette`` below: an `EventSourceResponse` whose generator waits), one
of ours with one idle follower, each SIGTERMed, interleaved; the time to exit of each.

Run: python -m bench.bench_drain [--repeat 3] [--sizes 100,1000,5000] [--quick]
[--output bench/results/drain.json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import sse_starlette
import uvloop
from starlette.applications import Starlette
from starlette.routing import Route

from ._harness import Result, Uvicorn, client_process, common_args, uvicorn_servers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

MODULE = "bench.bench_drain"
STREAM = "drain-bench"
DRAIN_TIMEOUT = 5.0
DESCRIPTION = """\
A uvicorn process (memory mode) serves N idle followers of one stream; a separate client
process opened them and waits. The time runs from SIGTERM to the server process's exit: the
middleware's signal hook starts the drain, every follower gets a jittered `retry:` hint and its
response ends, uvicorn closes the connections, runs the lifespan shutdown and exits. The client
checks that every follower read a `retry:` before the end of its body. Without the drain, uvicorn
would wait for these responses forever (or until `--timeout-graceful-shutdown`, then cut them).

Side by side with sse-starlette, one idle stream each: an sse-starlette app whose
`EventSourceResponse` generator waits for ever, and ours with one idle follower, each in its
own uvicorn process, SIGTERMed in turn (interleaved). sse-starlette watches uvicorn's exit flag
and ends its responses without a `retry:` or an id to resume from; ours ends the follower with
a jittered `retry:` after its last event."""

# the sse-starlette app (served by uvicorn as bench.bench_drain:idle_sse_starlette) ---------


async def _idle(request: Request) -> sse_starlette.EventSourceResponse:
    async def nothing() -> AsyncIterator[dict[str, str]]:
        await asyncio.Event().wait()  # an idle stream: nothing to send until the shutdown
        yield {"data": "never"}

    return sse_starlette.EventSourceResponse(nothing())


idle_sse_starlette = Starlette(routes=[Route("/streams/{stream_id}", _idle)])

# client (runs in its own process) ------------------------------------------------------------


async def _follower(port: int, started: asyncio.Queue[None]) -> bool:
    """One follower: True if its body ended cleanly after a ``retry:`` line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /streams/{STREAM} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
    writer.write(request.encode())
    await reader.readuntil(b"\r\n\r\n")
    started.put_nowait(None)
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if body.endswith(b"0\r\n\r\n"):  # the last chunk of a chunked body: a clean end
            writer.close()
            return b"\nretry: " in body
    writer.close()
    return False


async def client(port: int, followers: int) -> None:
    started: asyncio.Queue[None] = asyncio.Queue()
    tasks = []
    for _ in range(followers):
        tasks.append(asyncio.create_task(_follower(port, started)))
        if len(tasks) % 200 == 0:
            await asyncio.sleep(0)  # let the server accept in batches
    for _ in range(followers):
        await asyncio.wait_for(started.get(), 60)
    print(json.dumps({"ready": followers}), flush=True)
    clean = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
    print(json.dumps({"retry": sum(1 for c in clean if c is True)}), flush=True)


# driver ----------------------------------------------------------------------------------------


def _create_stream(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"streams": [STREAM]})
        connection.request("POST", "/create", body, {"content-type": "application/json"})
        answer = connection.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"POST /create answered {answer.status}: {answer.read()!r}")
        answer.read()
    finally:
        connection.close()


def one_run(followers: int, app: str = "bench.queue_apps:ours") -> tuple[float, int]:
    """Seconds from SIGTERM to exit with ``followers`` open streams of ``app``, and how many
    ended cleanly after a ``retry:`` (ours: every one, or the run fails)."""
    env = {"STREAMING_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    ours = app == "bench.queue_apps:ours"
    with uvicorn_servers(Uvicorn(app, env)) as (server,):
        if ours:
            _create_stream(server.port)
        reader = client_process(MODULE, server.port, followers)
        assert reader.stdout is not None
        try:
            ready = json.loads(reader.stdout.readline() or "{}")
            if ready.get("ready") != followers:
                raise RuntimeError(f"client did not open {followers} followers: {ready}")
            process = server.process
            assert process is not None
            started = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=DRAIN_TIMEOUT + 60)
            elapsed = time.perf_counter() - started
            verdict = json.loads(reader.stdout.readline() or "{}")
            if ours and verdict.get("retry") != followers:
                raise RuntimeError(f"{followers} followers, {verdict} ended with retry:")
        finally:
            if reader.poll() is None:
                reader.kill()
            reader.wait()
    return elapsed, int(verdict.get("retry", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description="SIGTERM to exit with open streams.")
    common_args(parser)
    parser.add_argument("--sizes", default="100,1000,5000", help="followers per run")
    parser.add_argument("--client", nargs=2, type=int, metavar=("PORT", "FOLLOWERS"))
    args = parser.parse_args()
    if args.client:
        uvloop.run(client(*args.client))
        return
    sizes = [10, 50] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    result = Result("drain", "Shutdown drain", DESCRIPTION)
    table = result.table("SIGTERM to exit", "s", higher_is_better=False)
    for size in sizes:
        samples = [one_run(size)[0] for _ in range(repeat)]
        table.add(f"followers_{size}", f"{size:,} idle followers", samples, x=size)
        print(f"{size} followers: {', '.join(f'{s:.2f}' for s in samples)} s", file=sys.stderr)
    biggest = table.rows[-1]
    result.target(
        "exit within drain_timeout + 2 s",
        f"< {DRAIN_TIMEOUT + 2:g} s",
        f"{biggest['max']:.2f} s at {sizes[-1]:,} followers",
        biggest["max"] < DRAIN_TIMEOUT + 2,
    )
    side_by_side(result, max(repeat, 3 if not args.quick else 1))
    result.save(args.output)


def side_by_side(result: Result, repeat: int) -> None:
    """One idle stream, sse-starlette then ours, ``repeat`` times interleaved."""
    table = result.table(
        "SIGTERM to exit, one idle stream", "s", higher_is_better=False, baseline="sse_starlette"
    )
    samples: dict[str, list[float]] = {"sse_starlette": [], "ours": []}
    resumable: dict[str, int] = {"sse_starlette": 0, "ours": 0}
    apps = {
        "sse_starlette": "bench.bench_drain:idle_sse_starlette",
        "ours": "bench.queue_apps:ours",
    }
    for _ in range(repeat):
        for name, app in apps.items():
            elapsed, with_retry = one_run(1, app)
            samples[name].append(elapsed)
            resumable[name] += with_retry
    table.add(
        "sse_starlette", "sse-starlette, 1 idle stream (no resume point)", samples["sse_starlette"]
    )
    table.add("ours", "ours, 1 idle follower (`retry:` after its last event)", samples["ours"])
    for name, values in samples.items():
        print(f"{name}: {', '.join(f'{s:.2f}' for s in values)} s", file=sys.stderr)
    result.notes.append(
        f"Streams that ended cleanly after a `retry:`: sse-starlette {resumable['sse_starlette']}"
        f" of {repeat}, ours {resumable['ours']} of {repeat}."
    )
    gap = statistics.median(samples["ours"]) - statistics.median(samples["sse_starlette"])
    result.target(
        "idle follower: exit within 1 s of sse-starlette",
        "< 1 s later (medians)",
        f"{gap:+.2f} s",
        gap < 1.0,
    )


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"the server did not exit: {exc}") from exc
