"""`WriteBatch`: the chunks a direct event stream sends in one turn of the loop, as one write.

A route that streams with Starlette's `StreamingResponse` sends every event as its own ASGI
message, and the server turns each into its own write to the socket: a system call, and for a
burst (a fast generator, a replay, a model that returns several tokens at once) a TCP segment
per event. Once a direct event stream's first body chunk has gone out on its own, the middleware
keeps the chunks sent in the same turn of the event loop and hands them to the server together,
from a callback that runs once the loop has finished its turn: the app's ``send`` returns at
once, and its bytes leave a few microseconds later, in order.

Nothing is held longer than that turn, and nothing piles up:

* at ``limit`` bytes (64 KiB) the app's ``send`` waits for the server to take them, as always;
* when the server does not take a batch at once (its flow control is paused: the client reads
  slowly), the batch is written from the callback as the server's own ``send`` coroutine, driven
  step by step without a task, and the app's next ``send`` waits for it. The write deadline
  (`deadline.WriteWatchdog`) sees that wait as a pending send;
* a server that fails the batch (ASGI 2.4: ``OSError`` once the client is gone) fails the app's
  next ``send`` with the same error;
* the end of the body, a last frame of the middleware and any message other than a body chunk
  send what is kept first.

``ChannelConfig(coalesce_writes=False)`` turns it off: every chunk is one server ``send``.

A followed stream (`EventStreamResponse`) writes through a batch too, from outside its task:
a live event that reaches a caught-up follower is handed to `WriteBatch.keep` by the fan-out
itself, and leaves with that loop turn's write, without waking the follower's task (see
`EventStreamResponse`). One loop callback per turn writes what every follower kept, each in
its response's context: an event to 10,000 followers schedules one callback, not 10,000
handles and context copies that would be alive together, outlive a young collection and hasten
the next full one. When the delivery itself runs in a plain loop callback (no task: a worker
thread's event handed to the loop), a follower's first frame of the turn is written at once,
as that callback would; from inside a task (the publisher's, the Pub/Sub reader's) it waits
for the turn's callback, so that nothing the server's ``send`` does is charged to that task
(an ``asyncio.timeout`` in a wrapper would cancel it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Awaitable, Coroutine

    from starlette.types import Message, Send

__all__ = ["BATCH_LIMIT", "Interruptible", "SendClock", "WriteBatch"]

BATCH_LIMIT = 64 * 1024
"""Bytes kept at most before the app's ``send`` waits for the server to take them."""


class _Clock(Protocol):
    """Where a batch notes when its pending write began (`RequestStreams.sending_since`)."""

    sending_since: float


class Interruptible(Protocol):
    """Told when a batch's write fails (`Follower`: its reader's wait ends at once)."""

    def interrupt(self) -> None: ...


class SendClock:
    """A `_Clock` of its own, for a response served without the middleware's request."""

    __slots__ = ("sending_since",)

    def __init__(self) -> None:
        self.sending_since = 0.0


class WriteBatch:
    """The body chunks of one response not yet handed to the server, and the write under way."""

    # fmt: off
    __slots__ = (
        "_chunks", "_clock", "_context", "_done", "_error", "_first", "_limit", "_loop",
        "_on_failure", "_send", "_size", "_turn",
        "_waiting", "_writing",
    )
    # fmt: on

    def __init__(
        self,
        send: Send,
        clock: _Clock,
        *,
        limit: int = BATCH_LIMIT,
        context: contextvars.Context | None = None,
        on_failure: Interruptible | None = None,
    ) -> None:
        self._send = send
        self._context = context  # where `keep`'s writes run (the response's)
        # Told when a write fails (nobody may send again soon). An object, not a callback: a
        # bound method would be 64 bytes more for each idle follower.
        self._on_failure = on_failure
        self._clock = clock
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._size = 0
        self._writing: Coroutine[Any, Any, None] | None = None  # the server's send, suspended
        self._waiting: asyncio.Future[None] | None = None  # the app waits for that write
        self._done = False
        self._first = True
        self._turn = False  # `keep` wrote in this loop turn: what comes next waits for its end
        self._error: BaseException | None = None

    def add(self, body: bytes) -> bool:
        """Keep ``body`` for this turn's write. False when the caller must `flush` now: past
        ``limit`` bytes, a write still pending, or the last one failed (``body`` is kept)."""
        chunks = self._chunks
        if not chunks:
            if self._first or self._writing is not None or self._error is not None or self._done:
                self._first = False  # the stream's first chunk leaves at once, on its own
                chunks.append(body)
                self._size = len(body)
                return False
            self._loop.call_soon(self._write_soon)
        chunks.append(body)
        self._size += len(body)
        return self._size < self._limit

    @property
    def failed(self) -> bool:
        """A write failed; the next `flush` raises its error."""
        return self._error is not None

    def accepts(self) -> bool:
        """`keep` may be called: no write pending, no failure to report, room left, open."""
        return (
            self._writing is None
            and self._error is None
            and not self._done
            and self._size < self._limit
        )

    def keep(self, body: bytes) -> None:
        """Write ``body`` from outside the app's task (after `accepts`), in the batch's
        ``context``: with this loop turn's end, or at once if it is the turn's first and no
        task runs (the caller is a plain loop callback)."""
        chunks = self._chunks
        chunks.append(body)
        if self._turn:
            self._size += len(body)
            return
        self._turn = True
        self._size = len(body)
        kept = _KEPT
        if kept.loop is not self._loop:  # a new loop in this thread (tests): start afresh
            kept.loop, kept.batches = self._loop, []
        if not kept.batches:
            self._loop.call_soon(_write_kept, kept.batches)
        kept.batches.append(self)
        if asyncio.current_task(self._loop) is None:
            self._write_in_context()

    async def flush(self) -> None:
        """Wait for the write under way, then hand what is kept to the server; raises what the
        server raised for either."""
        while self._writing is not None:
            waiting = self._waiting
            if waiting is None or waiting.done():  # done: cancelled with an earlier caller
                waiting = self._waiting = self._loop.create_future()
            await waiting
        self._raise()
        if self._chunks:
            body = self._take()
            # A driven write that just ended cleared the clock: this write starts it again.
            self._clock.sending_since = time.monotonic()
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def send_after(self, message: Message) -> None:
        """`flush`, then send ``message`` (the middleware's last frame)."""
        await self.flush()
        await self._send(message)

    def close(self) -> None:
        """The response is over: drop what is kept and stop a pending write."""
        self._done = True
        self._chunks.clear()
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.close()
            self._clock.sending_since = 0.0
        self._wake()

    def _raise(self) -> None:
        error = self._error
        if error is not None:
            self._chunks.clear()
            raise error

    def _take(self) -> bytes:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        return body

    def _write_soon(self) -> None:
        # The loop's callback: the turn in which the chunks were kept is over.
        if self._done or self._writing is not None or not self._chunks:
            return
        body = self._take()
        sent = self._send({"type": "http.response.body", "body": body, "more_body": True})
        self._step(sent if type(sent) is CoroutineType else _awaiting(sent))

    def _write_in_context(self) -> None:
        context = self._context
        try:
            if context is None:
                self._write_soon()
            else:
                context.run(self._write_soon)
        except Exception as exc:  # never the caller's (the fan-out's) problem
            self._fail(exc)

    def _step(self, writing: Coroutine[Any, Any, None]) -> None:
        try:
            waited = writing.send(None)
        except StopIteration:
            pass
        except (KeyboardInterrupt, SystemExit):
            self._finished()
            raise  # the process is stopping: not for the app's next send to find
        except asyncio.CancelledError:  # not the app's task: never cancel it by surprise
            self._fail(OSError("the server dropped the write"))
        except BaseException as exc:  # handed to the app's next send
            self._fail(exc)
        else:  # suspended: the server waits (its flow control), so does the app's next send
            if self._writing is None:
                self._writing = writing
                self._clock.sending_since = time.monotonic()
            if getattr(waited, "_asyncio_future_blocking", None):
                waited._asyncio_future_blocking = False  # as asyncio.Task does
                waited.add_done_callback(self._resume)
            else:  # a bare yield (``asyncio.sleep(0)``): step again on the next turn
                self._loop.call_soon(self._resume, None)
            return
        self._finished()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if self._on_failure is not None:
            self._on_failure.interrupt()

    def _resume(self, _: object) -> None:
        writing = self._writing
        if writing is not None and not self._done:
            self._step(writing)

    def _finished(self) -> None:
        if self._writing is not None:
            self._writing = None
            self._clock.sending_since = 0.0
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)


class _Kept(threading.local):
    """The batches `WriteBatch.keep` filled in this loop turn (one event loop per thread)."""

    loop: asyncio.AbstractEventLoop | None = None
    batches: list[WriteBatch]

    def __init__(self) -> None:
        self.batches = []


_KEPT = _Kept()


def _write_kept(batches: list[WriteBatch]) -> None:
    kept = _KEPT
    if kept.batches is batches:  # else another loop ran in this thread since: not its list
        kept.batches = []
    for batch in batches:
        batch._turn = False  # first, all: a write that raises (SystemExit) strands no batch
    for batch in batches:
        if batch._chunks:
            batch._write_in_context()


async def _awaiting(sent: Awaitable[None]) -> None:
    """A server's ``send`` that returned an awaitable other than a coroutine, as one."""
    await sent
