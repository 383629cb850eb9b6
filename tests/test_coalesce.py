"""A direct event stream hands the chunks of one loop turn to the server as one write
(`streaming_mw.web.coalesce`), and loses, reorders or delays nothing for it.

The server here is a scripted ``send`` that records every message it is handed and can hold a
write pending (its flow control paused), fail one (ASGI 2.4: ``OSError``) or count calls; one
case runs under uvicorn with a client that reads slowly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from streaming_mw import (
    ChannelConfig,
    StreamingMiddleware,
    StreamLeaseConfig,
    init_streaming,
    stream_lease,
)
from streaming_mw.runtime import StreamingContainer
from streaming_mw.sse import SSEEvent, SSEParser, encode, sse_headers
from streaming_mw.web.coalesce import BATCH_LIMIT, WriteBatch
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.types import Message

    from tests.helpers.uvicorn_server import StartUvicornThread


GATES: dict[str, asyncio.Event] = {}
"""What a gated route's next event waits for (``gate=each``: every event; ``first``: the
second), set by the test; made by each test on its own loop (`gates`)."""


def gates() -> None:
    GATES.clear()
    GATES.update(each=asyncio.Event(), first=asyncio.Event())


def frame(i: int, size: int = 0) -> bytes:
    return encode(data={"i": i, "pad": "x" * size}, event="token", id=str(i))


def build(coalesce: bool = True, *, write_timeout: float | None = 30.0) -> FastAPI:
    container = StreamingContainer()
    init_streaming(
        mode="memory",
        lease_config=StreamLeaseConfig(limit=1),
        channel_config=ChannelConfig(coalesce_writes=coalesce, write_timeout=write_timeout),
        container=container,
    )
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/burst")
    async def burst(n: int, size: int = 0, gate: str = "", fail: bool = False) -> Any:
        async def events() -> AsyncIterator[bytes]:
            for i in range(n):
                yield frame(i, size)
                if gate == "each" or (gate == "first" and i == 0):
                    # the next event waits for the test (which reads, or stops the client)
                    await GATES[gate].wait()
                    GATES[gate].clear()
            if fail:
                raise RuntimeError("the model went away")

        async with stream_lease("alice"):
            return StreamingResponse(events(), headers=sse_headers())

    return app


class Server:
    """The server's side of one request: every message it took, when, and how it answers."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.pending = 0  # sends waiting for `writable`
        self.fail_from: int | None = None  # body writes from this index on raise OSError
        self.disconnected = asyncio.Event()
        self.changed = asyncio.Event()  # a message taken, or a write began to wait

    @property
    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]

    async def receive(self) -> Message:
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            if self.fail_from is not None and len(self.bodies) >= self.fail_from:
                raise OSError("client disconnected")
            if not self.writable.is_set():
                self.pending += 1
                self.changed.set()
                try:
                    await self.writable.wait()
                finally:  # also when the write is abandoned (the stream was cut)
                    self.pending -= 1
        self.messages.append(message)
        self.changed.set()

    def holds(self, count: int) -> Callable[[], bool]:
        """True once the server has taken ``count`` token events."""
        return lambda: len(events_in(self.bodies)) == count

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds (``TimeoutError`` after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def serve(app: FastAPI, server: Server, query: str) -> asyncio.Task[None]:
    scope = AsgiClient(app).scope("GET", f"/burst?{query}")
    return asyncio.get_running_loop().create_task(app(scope, server.receive, server.send))


def events_in(bodies: list[bytes]) -> list[str]:
    parsed = SSEParser().feed(b"".join(bodies))
    return [e.id or "" for e in parsed if isinstance(e, SSEEvent) and e.event == "token"]


@pytest.mark.parametrize("coalesce", [True, False])
async def test_a_burst_leaves_in_a_few_writes_in_order(coalesce: bool) -> None:
    app = build(coalesce)
    async with lifespan(app):
        server = Server()
        await asyncio.wait_for(await serve(app, server, "n=2000"), 10)
    bodies = server.bodies
    assert events_in(bodies) == [str(i) for i in range(2000)]
    assert bodies[-1] == b""  # the end of the body, after everything
    if coalesce:
        assert bodies[0] == frame(0)  # the first event leaves at once, on its own
        assert len(bodies) < 2000 // 10
        assert max(map(len, bodies)) < BATCH_LIMIT + len(frame(1999))
    else:
        assert len(bodies) == 2001


async def test_events_that_come_apart_are_not_held() -> None:
    # A model's tokens arrive one at a time: each leaves in its own write, in the loop turn
    # after it was sent, never waiting for the next.
    # The route sends the next token only once the test has seen the last one: a token held
    # back for a later write would never arrive (`until` times out).
    app = build()
    gates()
    async with lifespan(app):
        server = Server()
        task = await serve(app, server, "n=5&gate=each")
        for count in range(1, 6):
            await server.until(server.holds(count))
            GATES["each"].set()
        await asyncio.wait_for(task, 5)
    assert events_in(server.bodies) == ["0", "1", "2", "3", "4"]
    assert len(server.bodies) == 6  # one write each, then the end of the body


async def test_a_server_that_does_not_take_a_write_holds_the_app_back() -> None:
    app = build()
    gates()
    async with lifespan(app):
        server = Server()
        task = await serve(app, server, f"n=400&size={BATCH_LIMIT // 100}&gate=first")
        await server.until(lambda: bool(server.bodies))
        server.writable.clear()  # the client stops reading
        GATES["first"].set()  # then the burst
        await server.until(lambda: server.pending == 1)  # one write waits
        for _ in range(10):
            await asyncio.sleep(0)
        held = len(events_in(server.bodies))
        assert server.pending == 1  # and the app waits behind it, not beside it
        server.writable.set()
        await asyncio.wait_for(task, 10)
    assert held < 400
    assert events_in(server.bodies) == [str(i) for i in range(400)]


async def test_the_write_deadline_cuts_a_batch_the_client_never_takes() -> None:
    app = build(write_timeout=0.2)
    gates()
    async with lifespan(app):
        server = Server()
        task = await serve(app, server, f"n=400&size={BATCH_LIMIT // 100}&gate=first")
        await server.until(lambda: bool(server.bodies))
        server.writable.clear()
        GATES["first"].set()
        await asyncio.wait_for(task, 5)  # cut: the request ends, the lease is released
        assert server.pending == 0
        again = Server()
        await asyncio.wait_for(await serve(app, again, "n=1"), 5)  # limit 1: it is free
    assert events_in(again.bodies) == ["0"]
    assert len(events_in(server.bodies)) < 400


async def test_a_failed_batch_fails_the_apps_next_send_and_ends_the_stream() -> None:
    app = build()
    async with lifespan(app):
        server = Server()
        server.fail_from = 1  # the first chunk goes; the next write finds the client gone
        task = await serve(app, server, "n=2000")
        with pytest.raises(OSError, match="client disconnected"):
            await asyncio.wait_for(task, 5)
        again = Server()
        await asyncio.wait_for(await serve(app, again, "n=1"), 5)  # the lease was released
    assert events_in(server.bodies) == ["0"]


async def test_kept_events_leave_before_the_error_frame() -> None:
    app = build()
    async with lifespan(app):
        server = Server()
        await asyncio.wait_for(await serve(app, server, "n=50&fail=true"), 5)
    body = b"".join(server.bodies)
    assert events_in(server.bodies) == [str(i) for i in range(50)]
    assert body.index(b"event: error") > body.index(b"id: 49\n")


async def test_a_slow_reader_under_uvicorn_gets_every_event_in_order(
    uvicorn_thread: StartUvicornThread,
) -> None:
    # 3,000 events of 1 KB in one burst: far more than the socket buffers hold, so uvicorn's
    # flow control pauses the batches while the client reads slowly.
    server = uvicorn_thread(build())
    seen: list[str] = []
    async with SSEClient.connect(server.base_url, "/burst?n=3000&size=1000") as client:
        async for event in client.events(timeout=20.0):
            if event.event == "token":
                seen.append(event.id or "")
                if len(seen) % 500 == 0:
                    await asyncio.sleep(0.05)
    assert seen == [str(i) for i in range(3000)]


class Clock:
    sending_since = 0.0


async def test_a_write_that_yields_a_bare_turn_is_driven_to_its_end() -> None:
    taken: list[bytes] = []

    async def send(message: Message) -> None:
        await asyncio.sleep(0)  # a bare yield, no future
        taken.append(message["body"])

    batch = WriteBatch(send, Clock())
    assert not batch.add(b"a")  # the first chunk: the caller flushes it itself
    await batch.flush()
    assert batch.add(b"b")
    assert batch.add(b"c")
    await asyncio.sleep(0.01)
    assert taken == [b"a", b"bc"]


async def test_a_write_the_server_drops_fails_the_next_send_not_the_app_task() -> None:
    stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(message: Message) -> None:
        if message["body"] != b"a":
            await stuck

    clock = Clock()
    batch = WriteBatch(send, clock)
    batch.add(b"a")
    await batch.flush()
    assert batch.add(b"b")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert clock.sending_since > 0  # pending: the write deadline sees it
    stuck.cancel()
    with pytest.raises(OSError, match="dropped"):
        await batch.send_after({"type": "http.response.body", "body": b"", "more_body": False})
    assert clock.sending_since == 0.0


async def test_a_send_returning_a_future_is_awaited_too() -> None:
    taken: list[bytes] = []
    loop = asyncio.get_running_loop()

    def send(message: Message) -> asyncio.Future[None]:
        future: asyncio.Future[None] = loop.create_future()

        def take() -> None:
            taken.append(message["body"])
            future.set_result(None)

        loop.call_soon(take)
        return future

    batch = WriteBatch(send, Clock())
    batch.add(b"a")
    await batch.flush()
    batch.add(b"b")
    batch.add(b"c")
    await batch.flush()
    await asyncio.sleep(0.01)
    assert taken == [b"a", b"bc"]
