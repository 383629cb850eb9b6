"""`DisconnectWatch`: how a stream response sees its client leave under ASGI 2.3.

A server speaking ASGI 2.3 tells of a disconnect only through ``receive``. The response reads
it beside its relay and, on ``http.disconnect`` (or a failing ``receive``), cancels the relay's
task. An anyio task group cost every idle follower two cancel scopes, an event, a second
coroutine chain and their closures (about 2 KiB); a coroutine around ``receive``, 230 bytes.

The server's own ``receive`` is stepped by hand from its future's callbacks, as
`WriteBatch` steps ``send``: no task, so nothing of the task (its object, its entry in
asyncio's task set) stays alive with each idle stream, about 300 bytes. A ``receive`` that
fails there before it ever waited (one that needs a task of its own) is read again in a task;
any other ``receive`` (a middleware's wrapper, which may need its task) is read in a task.
"""

from __future__ import annotations

import asyncio
import logging
from types import CoroutineType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Coroutine

    from starlette.types import Message, Receive

    from .frames import CloseReason

__all__ = ["DisconnectWatch"]

log = logging.getLogger("streaming_mw.responses")


class DisconnectWatch:
    """Mixed into a stream response: `_watch` reads ``receive`` until the disconnect and
    cancels the relay's task then, once (the relay knows by ``_cut``)."""

    # fmt: off
    __slots__ = (
        "_by_hand", "_context", "_cut", "_reading", "_receive", "_receive_failed", "_relay_task",
        "_relayed", "_watcher", "close_reason",
    )
    # fmt: on

    close_reason: CloseReason | None

    def _init_watch(self) -> None:
        self._relayed = False  # the relay ended: a disconnect cancels nothing
        self._cut = False  # the watcher cancelled the relay
        self._receive_failed: BaseException | None = None  # for the relay to raise
        self._receive: Receive | None = None
        self._relay_task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Future[Message] | None = None  # a task reading `receive`
        self._reading: Coroutine[Any, Any, Message] | None = None  # or a call stepped by hand
        self._context: contextvars.Context | None = None
        self._by_hand = False  # `receive` is the server's own: stepped without a task

    def _watch(
        self,
        receive: Receive,
        relay: asyncio.Task[object],
        context: contextvars.Context,
        *,
        by_hand: bool,
    ) -> None:
        """Watch ``receive`` for the disconnect that cuts ``relay`` short, reading it in
        ``context`` (a copy of the relay's, shared with the response's other callbacks: one
        copy per callback would be 64 bytes more for each idle stream). ``by_hand``: the
        server's own ``receive``, stepped without a task."""
        self._receive, self._relay_task, self._context = receive, relay, context
        self._read(by_hand=by_hand)

    def _stop_watching(self) -> None:
        """The relay ended: a disconnect now cancels nothing."""
        self._relayed = True
        if self._watcher is not None:
            self._watcher.cancel()
        reading, self._reading = self._reading, None
        if reading is not None:
            try:
                reading.close()  # its `await` raises GeneratorExit: it stops waiting
            except Exception:
                log.exception("closing the request's receive call failed")

    def _read(self, *, by_hand: bool) -> None:
        receive, context = self._receive, self._context
        if receive is None or context is None:
            return
        self._by_hand = by_hand
        answer = receive()
        if by_hand and type(answer) is CoroutineType:
            self._reading = answer
            # Its first step too runs in the context (and outside any task), as the later ones.
            asyncio.get_running_loop().call_soon(self._step, None, context=context)
        elif type(answer) is CoroutineType:
            loop = asyncio.get_running_loop()
            self._watcher = watcher = loop.create_task(answer, context=context)
            watcher.add_done_callback(self._received, context=context)
        else:  # an awaitable that is no coroutine (a future)
            self._watcher = watcher = asyncio.ensure_future(answer)
            watcher.add_done_callback(self._received, context=context)

    def _step(self, waited: object) -> None:
        reading = self._reading
        if reading is None or self._relayed:
            return
        try:
            suspended = reading.send(None)
        except StopIteration as stop:
            self._reading = None
            self._answered(stop.value, None)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._reading = None
            if waited is None:  # it failed before it ever waited: it may need a task
                log.debug("receive failed outside a task (%r): read in a task", exc)
                self._read(by_hand=False)
            else:
                self._answered(None, exc)
        else:
            if getattr(suspended, "_asyncio_future_blocking", None):
                suspended._asyncio_future_blocking = False  # as asyncio.Task does
                suspended.add_done_callback(self._step, context=self._context)
            else:  # a bare yield (``asyncio.sleep(0)``): step again on the next turn
                loop = asyncio.get_running_loop()
                loop.call_soon(self._step, True, context=self._context)

    def _received(self, watcher: asyncio.Future[Message]) -> None:
        if watcher.cancelled():
            return  # the relay ended first
        failure = watcher.exception()
        self._answered(None if failure is not None else watcher.result(), failure)

    def _answered(self, message: Message | None, failure: BaseException | None) -> None:
        """``receive`` answered ``message``, or raised ``failure``: on ``http.disconnect``, or
        if it failed, cancel the relay (if it still runs); on anything else, read on."""
        if self._relayed:
            return  # the relay ended first
        if failure is None:
            if message is None or message["type"] != "http.disconnect":
                # A piece of the request's body: not what is waited for.
                self._read(by_hand=self._by_hand)
                return
            self.close_reason = self.close_reason or "client_disconnect"
        else:  # the relay re-raises it once it stopped
            self._receive_failed = failure
            self.close_reason = self.close_reason or "error"
        self._cut = True
        if self._relay_task is not None:
            self._relay_task.cancel("streaming_mw: client disconnect")
