"""`Drain`: what a process does with its open streams when it is told to shut down.

A drain starts once, from the first of: a SIGTERM/SIGINT (handlers chained in front of the
server's own, see `install_signal_hooks`), a call to `start_drain` (a server hook, an admin
route), or the lifespan shutdown (the last resort: most servers send it only after every
connection closed). Then:

* new streams are refused (`DrainingError`, answered ``503`` with ``Retry-After``; a follow that
  asked for ``text/event-stream`` gets ``200`` with a ``retry:`` hint instead);
* every followed stream ends at once, after the last whole event it sent, with a jittered
  ``retry:`` so its client resumes elsewhere from its cursor;
* every direct stream may finish until ``drain_timeout``; past it, it is cut with a terminal
  ``error {reason: "shutdown"}`` and ``retry:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "Drain", "DrainTarget", "SignalHook", "drain_retry_ms"]

log = logging.getLogger("streaming_mw.drain")

DEFAULT_DRAIN_TIMEOUT = 5.0
"""Seconds a direct stream may still run once the drain started."""

_RETRY_MS = (500, 3000)
"""Range of the ``retry:`` hint sent at the drain: spread so clients do not all come back in
the same millisecond."""

_CUT_TIMEOUT = 1.0


def drain_retry_ms() -> int:
    """A jittered reconnection delay for one stream ended by the drain."""
    return random.randint(*_RETRY_MS)  # noqa: S311 - jitter, not a secret


class DrainTarget(Protocol):
    """An open stream the drain can end."""

    def begin_drain(self) -> None:
        """The drain started (a followed stream ends now; a direct one may go on)."""

    async def cut_for_shutdown(self) -> None:
        """The drain deadline passed and the stream is still open: end it now."""


class Drain:
    """The drain state of one container: started or not, and the streams it waits for."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.timeout = DEFAULT_DRAIN_TIMEOUT
        self._followed: set[DrainTarget] = set()
        self._direct: set[DrainTarget] = set()
        self._task: asyncio.Task[None] | None = None
        self._emptied: asyncio.Event | None = None

    @property
    def draining(self) -> bool:
        """The drain has started: no new streams."""
        return self.started_at is not None

    @property
    def open_streams(self) -> int:
        """Streams the drain still has to end."""
        return len(self._followed) + len(self._direct)

    def add(self, target: DrainTarget, *, direct: bool) -> None:
        """Track an open stream (ended at once if the drain already started)."""
        (self._direct if direct else self._followed).add(target)
        if self.draining:
            target.begin_drain()

    def discard(self, target: DrainTarget) -> None:
        """The stream ended on its own."""
        self._followed.discard(target)
        self._direct.discard(target)
        if not self._direct and self._emptied is not None:
            self._emptied.set()

    def start(self, timeout: float | None = None) -> asyncio.Task[None]:
        """Start the drain (idempotent) and return the task that ends it."""
        if self._task is None:
            self.started_at = time.monotonic()
            if timeout is not None:
                self.timeout = timeout
            log.info(
                "streaming_mw: draining %d followed and %d direct stream(s), deadline %gs",
                len(self._followed),
                len(self._direct),
                self.timeout,
            )
            self._emptied = asyncio.Event()
            for target in list(self._followed) + list(self._direct):
                target.begin_drain()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="streaming_mw.drain"
            )
        return self._task

    async def wait(self) -> None:
        """Wait until every stream has ended (or was cut at the deadline)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        emptied = self._emptied
        if self._direct and emptied is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(emptied.wait(), self.timeout)
        late = list(self._direct)
        if late:
            log.warning("streaming_mw: drain deadline passed, cutting %d stream(s)", len(late))
            await asyncio.gather(
                *(asyncio.wait_for(t.cut_for_shutdown(), _CUT_TIMEOUT) for t in late),
                return_exceptions=True,
            )


_HOOKED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalHook:
    """A handler that starts the drain on the loop, then calls the handler it replaced."""

    def __init__(self, loop: asyncio.AbstractEventLoop, begin: Callable[[], object]) -> None:
        self.loop = loop
        self.begin = begin
        self.previous: dict[int, Callable[[int, FrameType | None], object]] = {}

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to drain
            self.loop.call_soon_threadsafe(self.begin)
        previous = self.previous.get(sig)
        if previous is not None:
            previous(sig, frame)

    def install(self) -> None:
        """Chain in front of each Python-level handler the server set (idempotent).

        Signals the server left at their default (or ignored) are not taken over: then the
        server does not handle them and the process must still die of them.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _HOOKED_SIGNALS:
            current = signal.getsignal(sig)
            if current is self or not callable(current):
                continue
            self.previous[sig] = current
            signal.signal(sig, self)

    def uninstall(self) -> None:
        """Put back the handlers we replaced, where ours is still the one installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self.previous.items():
            if signal.getsignal(sig) is self:
                signal.signal(sig, previous)
        self.previous.clear()
