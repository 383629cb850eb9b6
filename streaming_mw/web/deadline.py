"""The write deadline: a stream whose client stopped reading ends as a disconnect.

A client that is still connected but no longer reads (a frozen tab, a stuck proxy, a peer
whose receive window stays shut) never fails a send: once the transport's buffer is full the
server's ``send`` waits for it to drain (uvicorn awaits its flow control), forever, and the
stream holds its lease all that time. TCP keepalive and the TCP user timeout do not help: the
peer's kernel acknowledges every probe.

So each stream the middleware tracks records when its pending ``send`` began
(`RequestStreams.sending_since`: two attribute stores per send, no timer per send), and one
`WriteWatchdog` per middleware checks them every `check_interval` seconds while streams are
open. A stream whose send has been pending longer than ``ChannelConfig.write_timeout`` is cut:
its request task is cancelled (the send with it), its leases are released, its span and the
``streams_closed`` metric say ``close_reason="write_timeout"``, and a log line names the cause.
It gets no last frame (nothing reaches a client that does not read); a followed client that
comes back resumes from its cursor as after any cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from .._tasks import detached

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["WriteWatchdog", "Writer", "check_interval"]

log = logging.getLogger("streaming_mw.middleware")

_MAX_INTERVAL = 1.0
_MIN_INTERVAL = 0.05


def check_interval(timeout: float) -> float:
    """How often the watchdog looks: a quarter of the deadline, between 50 ms and 1 s. A
    stream is cut at most ``timeout + check_interval(timeout)`` after its send began."""
    return min(_MAX_INTERVAL, max(_MIN_INTERVAL, timeout / 4))


class Writer(Protocol):
    """A stream the watchdog can end: what `RequestStreams` offers it."""

    @property
    def sending_since(self) -> float:
        """``time.monotonic()`` when the pending send began; 0.0 when none is pending."""

    def describe(self) -> str:
        """The stream, for the log line (its id or path)."""

    def cut_for_write_timeout(self) -> None:
        """End the stream now, as a disconnect."""


class WriteWatchdog:
    """Checks the open streams of one middleware for a send pending past its deadline.

    Its task runs only while streams are watched (it ends with the last one), on the loop of
    the requests it serves.
    """

    def __init__(self) -> None:
        self._streams: dict[Writer, float] = {}
        self._waited: dict[Writer, float] = {}  # the longest pending send seen, per stream
        self._task: asyncio.Task[None] | None = None
        self._interval = _MAX_INTERVAL
        self.cuts = 0
        """Streams this watchdog ended, since it was built."""
        self.longest_spared = 0.0
        """The longest pending send it saw in a stream that then ended on its own (seconds)."""

    @property
    def watched(self) -> Mapping[Writer, float]:
        """The streams watched now, each with its deadline in seconds."""
        return self._streams

    def watch(self, stream: Writer, timeout: float | None) -> None:
        """Check ``stream`` from now on (``timeout=None``: never cut it)."""
        if timeout is None:
            return
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._streams = {}  # streams of a loop that is gone are not ours to cut
            self._waited = {}
            self._interval = check_interval(timeout)
            self._task = loop.create_task(
                self._run(), name="streaming_mw.write_watchdog", context=detached()
            )
            # It only sleeps between checks: when its loop closes under it (an app served
            # without a lifespan, a test's loop), dropping it is harmless, so it is dropped
            # without asyncio's "Task was destroyed but it is pending" error log.
            self._task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._interval = min(self._interval, check_interval(timeout))
        self._streams[stream] = timeout

    def forget(self, stream: Writer) -> None:
        """``stream`` ended."""
        self._streams.pop(stream, None)
        self.longest_spared = max(self.longest_spared, self._waited.pop(stream, 0.0))

    def check(self, now: float) -> int:
        """Cut every stream whose send has been pending past its deadline at ``now``;
        returns how many."""
        late = []
        for stream, timeout in self._streams.items():
            since = stream.sending_since
            if since and now - since > timeout:
                late.append((stream, now - since, timeout))
            elif since:
                self._waited[stream] = max(self._waited.get(stream, 0.0), now - since)
        for stream, pending, timeout in late:
            self._streams.pop(stream, None)
            self._waited.pop(stream, None)
            log.warning(
                "ending stream %s as a disconnect: its client read nothing for %.1fs "
                "(write_timeout %gs)",
                stream.describe(),
                pending,
                timeout,
            )
            stream.cut_for_write_timeout()
        self.cuts += len(late)
        return len(late)

    async def _run(self) -> None:
        while self._streams:
            await asyncio.sleep(self._interval)
            try:
                self.check(time.monotonic())
            except Exception:  # never let one stream stop the checks of the others
                log.exception("the write deadline check failed")
