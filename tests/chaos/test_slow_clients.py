"""Clients that stop reading while events flow, beside clients that read normally.

``tests.apps.chaos`` in a uvicorn child process (memory mode) with a write deadline of 3 s and
follower queues of 8 events:

- a client that opens a direct stream and never reads (a 4 KiB receive buffer): its sends
  block once the buffers are full; the write deadline ends the stream as a disconnect, with a
  log line, and its lease comes back;
- the same on a followed stream (its send blocks too, so the deadline ends it as well);
- a follower that pauses 1.5 s (less than the deadline) overflows its queue of 8: it is cut
  with ``: slow consumer: resume`` and ``retry:``, and resuming from its cursor loses nothing;
- a direct client that stops reading for 1 s three times is never cut: it gets its whole
  answer;
- meanwhile 5 direct and 5 followed streams read normally and complete in full.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import TYPE_CHECKING

import pytest

from tests.helpers.chaos import Seen, chaos_server, messages, read_until_end, settled
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(120)]

WRITE_TIMEOUT = 3.0
CHECK = 0.75  # check_interval(3.0)
SIZE = 16 * 1024
CUT = re.compile(r"ending stream (\S+) as a disconnect: its client read nothing for ([\d.]+)s")


def stalled_client(port: int, request: bytes) -> socket.socket:
    """Send ``request`` from a socket with a 4 KiB receive buffer, read the response head,
    then never read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    head = sock.recv(256)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()


def post(path: str, user: str, config: Mapping[str, object]) -> bytes:
    body = json.dumps(config).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-User: {user}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def slow_reader(base_url: str, seen: Seen) -> float:
    """A direct client that stops reading for 1 s (well under the deadline) three times,
    reading what arrived in between: its stream's sends block, but never long enough."""
    started = time.monotonic()
    path = f"/direct?user=slow-reader&n=2000&every=0.001&size={SIZE}"
    async with SSEClient.connect(base_url, path, timeout=10, receive_buffer=16384) as client:
        for _ in range(3):
            client.pause()
            await asyncio.sleep(1.0)
            client.resume()
            reading = time.monotonic()
            while time.monotonic() - reading < 0.3:  # drain the buffers: the server's send returns
                seen.events.append(await client.next_event(10))
                if seen.events[-1].event == "done":
                    seen.ended = "terminal"
                    return time.monotonic() - started
        await read_until_end(client, seen, timeout=30)
    return time.monotonic() - started


async def pausing_follower(base_url: str, seen: Seen) -> None:
    """A follower that stops reading for 1.5 s, then reads on; resumes after its cut."""
    config = {"steps": 800, "delay": 0.001, "size": SIZE}
    headers = {"x-user": "pauser"}
    async with SSEClient.connect(
        base_url,
        "/deploy",
        method="POST",
        json=config,
        headers=headers,
        timeout=10,
        receive_buffer=16384,
    ) as client:
        stream_id = client.headers["x-stream-id"]
        client.pause()
        await asyncio.sleep(1.5)
        client.resume()
        await read_until_end(client, seen, timeout=30)
        cut = [c for c in client.comments if "slow consumer" in c]
        first_cut = len(cut) == 1 and client.retry == 1000
        cursor = client.last_event_id
    while seen.ended != "terminal" and seen.connections < 10:  # resume, as a browser does
        headers["last-event-id"] = cursor
        async with SSEClient.connect(base_url, f"/streams/{stream_id}", headers=headers) as client:
            await read_until_end(client, seen, timeout=30)
            cursor = client.last_event_id or cursor
    seen.retries = int(first_cut)


async def normal(base_url: str, kind: str, user: str, seen: Seen) -> float:
    started = time.monotonic()
    if kind == "direct":
        connect = SSEClient.connect(base_url, f"/direct?user={user}&n=50&every=0.02")
    else:
        config = {"steps": 50, "delay": 0.02}
        connect = SSEClient.connect(
            base_url, "/deploy", method="POST", json=config, headers={"x-user": user}
        )
    async with connect as client:
        await read_until_end(client, seen, timeout=30)
    return time.monotonic() - started


async def test_clients_that_stop_reading_are_ended_and_the_others_are_not_slowed(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    server = chaos_server(tmp_path, None, WRITE_TIMEOUT=WRITE_TIMEOUT, QUEUE=8, HISTORY=1000)
    await asyncio.to_thread(server.start)
    stalled = ["nr-direct", "nr-follow"]
    users = [*stalled, "slow-reader", "pauser"] + [f"n{i}" for i in range(10)]
    sockets: list[socket.socket] = []
    try:
        warm = Seen()
        await normal(server.base_url, "follow", "warm", warm)
        base = await settled(server.base_url, users, tasks=10**6)
        opened = time.monotonic()
        sockets.append(
            await asyncio.to_thread(
                stalled_client,
                server.port,
                get(f"/direct?user=nr-direct&n=100000&every=0.002&size={SIZE}"),
            )
        )
        follow = {"steps": 3000, "delay": 0.002, "size": 4096}
        sockets.append(
            await asyncio.to_thread(
                stalled_client, server.port, post("/deploy", "nr-follow", follow)
            )
        )
        released: dict[str, float] = {}

        async def watch_leases() -> None:
            while len(released) < len(stalled):
                held = (await settled(server.base_url, stalled, 0, timeout=0))["held"]
                for user in stalled:
                    if user not in held and user not in released:
                        released[user] = time.monotonic() - opened
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_leases())
        slow_seen, pause_seen = Seen(), Seen()
        normal_seen = {f"n{i}": Seen() for i in range(10)}
        timings = await asyncio.gather(
            slow_reader(server.base_url, slow_seen),
            pausing_follower(server.base_url, pause_seen),
            *(
                normal(server.base_url, "direct" if i < 5 else "follow", f"n{i}", s)
                for i, s in enumerate(normal_seen.values())
            ),
        )
        await asyncio.wait_for(watcher, 30)
        after = await settled(server.base_url, users, base["tasks"])
    finally:
        for sock in sockets:
            sock.close()
        await asyncio.to_thread(server.stop)
    log = server.log_text()
    cuts = {stream: float(pending) for stream, pending in CUT.findall(log)}
    normal_times = [t for t in timings[2:] if t is not None]
    print(
        f"\nslow clients: non-reading clients' leases back after "
        f"{', '.join(f'{u} {t:.1f} s' for u, t in sorted(released.items()))} "
        f"(send pending when cut: {', '.join(f'{p:.1f} s' for p in cuts.values())}); "
        f"slow reader done in {timings[0]:.1f} s ({len(slow_seen.events)} events); "
        f"pausing follower cut by its queue bound: {bool(pause_seen.retries)}, then resumed "
        f"({pause_seen.connections} connections); normal streams "
        f"{min(normal_times):.2f}-{max(normal_times):.2f} s for 50 events at 20 ms; "
        f"write cuts {after['write_cuts']}, longest send spared {after['longest_spared']:.1f} s; "
        f"tasks {after['tasks']} (baseline {base['tasks']}); "
        f"RSS {base['rss_kb'] // 1024}->{after['rss_kb'] // 1024} MiB; "
        f"{time.monotonic() - started:.1f} s"
    )
    # the two clients that read nothing: ended by the deadline, with a log line each
    assert after["write_cuts"] == 2, log[-3000:]
    assert len(cuts) == 2, log[-3000:]
    # (the log line rounds to 0.1 s)
    assert all(WRITE_TIMEOUT - 0.05 <= p <= WRITE_TIMEOUT + CHECK + 1.0 for p in cuts.values())
    for user in stalled:
        assert f"released 1 lease(s) of {user}: stream" in log
    assert log.count("ended (write_timeout)") == 2
    # the reader that pauses: its sends waited, it was not cut, it got the whole answer
    assert after["longest_spared"] > 0  # a check saw its send waiting, and spared it
    tokens = [json.loads(e.data)["n"] for e in slow_seen.events if e.event == "token"]
    assert slow_seen.ended == "terminal"
    assert tokens == list(range(1, 2001))
    # the pausing follower: cut by its queue bound with retry:, resumed without loss
    assert pause_seen.retries == 1
    assert messages(pause_seen.events) == [str(n) for n in range(1, 801)]
    assert pause_seen.events[-1].event == "complete"
    ids = [e.id for e in pause_seen.events]
    assert len(ids) == len(set(ids))
    # the others: every event
    for user, seen in normal_seen.items():
        assert seen.ended == "terminal", user
        count = sum(1 for e in seen.events if e.event in {"token", "log"})
        assert count == 50, (user, count)
    # nothing left
    assert after["leases"] == 0, after
    assert after["open_streams"] == 0, after
    assert after["watched"] == 0
    assert after["tasks"] <= base["tasks"], (after["tasks"], base["tasks"])
    # the memory history holds up to 1,000 events of each stream, 16 KiB each
    assert after["rss_kb"] - base["rss_kb"] < 128 * 1024
    assert "Traceback" not in log, log[-3000:]
