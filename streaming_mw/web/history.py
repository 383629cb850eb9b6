"""`HistoryWriter`: the history writes of every resumable stream a process generates, sent
together, one pipelined round trip at a time.

Each generation hands over a flight of up to 8 batches of up to 512 events (`write_flight`)
and waits for their answers before it sends the next. The batches of all the generations that
are ready go to the backend in one `ProducingBackend.append_batches` call: one round trip and
one pooled connection carry all of them, instead of a round trip per batch competing for the
pool with stream creation, leases and heartbeats. A flight whose round trip failed is sent
again from the first batch the backend does not have (`ProducingBackend.producer_progress`),
so every batch is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Final

from ..errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._tasks import TaskSet
    from ..channels.producing import Batch, ProducingBackend

__all__ = ["RETRY_FOR", "HistoryWriter", "history_writer", "write_flight"]

log = logging.getLogger("streaming_mw.resumable")

RETRY_FOR: Final = 10.0
"""Seconds a history write keeps retrying while the backend is unavailable."""

_MAX_BATCHES: Final = 64
"""Batches (of up to 512 events each) in one round trip at most."""

_writers: weakref.WeakKeyDictionary[ProducingBackend, HistoryWriter] = weakref.WeakKeyDictionary()


def history_writer(backend: ProducingBackend, tasks: TaskSet) -> HistoryWriter:
    """The process's writer for ``backend`` (one per backend, made on first use)."""
    writer = _writers.get(backend)
    if writer is None:
        writer = _writers[backend] = HistoryWriter(backend, tasks)
    return writer


class HistoryWriter:
    """Sends the batches handed to `append`, all that are ready in one round trip."""

    def __init__(self, backend: ProducingBackend, tasks: TaskSet) -> None:
        self._backend = backend
        self._tasks = tasks
        self._pending: list[tuple[Batch, asyncio.Future[int]]] = []
        self._task: asyncio.Task[None] | None = None

    def append(self, batch: Batch) -> asyncio.Future[int]:
        """Queue ``batch``; the future is its first ``seq``, or the error it met."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        if self._task is None or self._task.done():
            self._task = self._tasks.spawn(self._run(), name="streaming_mw.history", detach=True)
        return future

    async def _run(self) -> None:
        taken: list[tuple[Batch, asyncio.Future[int]]] = []
        try:
            while self._pending:
                taken = self._pending[:_MAX_BATCHES]
                del self._pending[:_MAX_BATCHES]
                try:
                    answers = await self._backend.append_batches([b for b, _ in taken])
                except BackendUnavailableError as exc:
                    answers = [exc] * len(taken)
                for (_, future), answer in zip(taken, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                taken = []
        finally:  # cancelled (the container stops): nothing waits for ever
            for _, future in taken + self._pending:
                if not future.done():
                    future.set_exception(BackendUnavailableError("history writer stopped"))
            self._pending.clear()


async def write_flight(
    writer: HistoryWriter, backend: ProducingBackend, flight: Sequence[Batch]
) -> list[int | None] | None:
    """Append ``flight`` (consecutive batches of one producer, in order) through ``writer``.

    Returns each batch's first ``seq`` (None: stored by an attempt whose answer was lost), or
    None when the backend stayed unavailable for ``RETRY_FOR`` seconds (the history is given
    up). Raises `StreamClosedError` when the stream ended meanwhile.
    """
    stream_id, producer = flight[0].stream_id, flight[0].producer.producer_id
    firsts: list[int | None] = []
    todo = list(flight)
    delay, waited = 0.05, 0.0
    while todo:
        answers = await asyncio.gather(*(writer.append(b) for b in todo), return_exceptions=True)
        done = next((i for i, a in enumerate(answers) if isinstance(a, BaseException)), len(todo))
        firsts += [a for a in answers[:done] if isinstance(a, int)]
        todo = todo[done:]
        if not todo:
            break
        error = answers[done]
        if isinstance(error, BaseException) and not isinstance(error, BackendUnavailableError):
            raise error
        while True:  # wait for the backend, then ask how far the producer got
            if waited >= RETRY_FOR:
                log.error("stream %s: history lost, backend unavailable", stream_id)
                return None
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)
            try:
                stored = await backend.producer_progress(stream_id, producer)
            except BackendUnavailableError:
                continue
            break
        while todo and todo[0].producer.seq <= stored:
            firsts.append(None)
            todo.pop(0)
    return firsts
