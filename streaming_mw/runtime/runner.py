"""`WorkerRunner`: runs `sse_response` workers — sync ones on a dedicated, bounded pool of
daemon threads (never anyio's default limiter, so streams cannot starve the app's own sync
endpoints), async ones as tasks — and makes sure every stream ends: a worker that raises ends
its stream with an ``error`` event, one that returns without a terminal event gets
``complete``. At shutdown a sync worker is told through ``emitter.cancelled``; one that ignores
it is abandoned (its stream ends with ``error {reason: "shutdown"}``, its daemon thread does
not hold the process's exit)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .._failure import failure_details, new_error_id
from .._tasks import TaskSet
from ..errors import StreamClosedError
from ..scope import current_stream
from ..telemetry import ATTR_ERROR_ID, ATTR_STREAM_ID
from .threads import DaemonThreadPool

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from ..emitters import SSEEmitter
    from ..telemetry import Telemetry

__all__ = ["WorkerRun", "WorkerRunner", "is_async_callable"]

log = logging.getLogger("streaming_mw.runner")

_STOP_TIMEOUT = 5.0


def is_async_callable(func: object) -> bool:
    """True for coroutine functions, including objects with ``async def __call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - the method, not callability
    )


class WorkerRun:
    """One running worker; `cancel` asks it to stop (a task is cancelled, a thread is told
    through ``emitter.cancelled``)."""

    def __init__(self, task: asyncio.Task[None], emitter: SSEEmitter) -> None:
        self.task = task
        self.emitter = emitter

    def cancel(self) -> None:
        self.emitter.cancelled = True
        self.task.cancel()


class WorkerRunner:
    """Starts workers and supervises them until their stream has ended."""

    def __init__(self, threads: int, expose_errors: bool = False) -> None:
        self.threads = threads
        self._expose_errors = expose_errors
        self._executor = DaemonThreadPool(threads, "streaming_mw-worker")
        self._tasks = TaskSet()
        self._emitters: set[SSEEmitter] = set()
        self._stopping = False

    def start(
        self,
        worker: Callable[..., Any],
        config: Any,
        emitter: SSEEmitter,
        *,
        telemetry: Telemetry | None = None,
    ) -> WorkerRun:
        """Run ``worker(config, emitter)`` in the background (in a PRODUCER span, a child of
        the current span, when ``telemetry`` is given)."""
        name = getattr(worker, "__qualname__", repr(worker))
        run = self._supervise(worker, config, emitter)
        if telemetry is not None:
            run = self._traced(run, telemetry, name, emitter)
        task = self._tasks.spawn(run, name=f"streaming_mw.worker:{name}")
        return WorkerRun(task, emitter)

    @staticmethod
    async def _traced(
        run: Coroutine[Any, Any, None], telemetry: Telemetry, name: str, emitter: SSEEmitter
    ) -> None:
        attributes = {ATTR_STREAM_ID: emitter.stream_id, "code.function": name}
        with telemetry.producer("stream publish", attributes):
            await run

    async def _supervise(
        self, worker: Callable[..., Any], config: Any, emitter: SSEEmitter
    ) -> None:
        self._emitters.add(emitter)
        try:
            current_stream.set(emitter.stream_id)  # this task's context: log shipping
            if is_async_callable(worker):
                await worker(config, emitter)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(contextvars.copy_context().run, worker, config, emitter)
                result = await loop.run_in_executor(self._executor, call)
                if inspect.isawaitable(result):  # a plain callable that returned a coroutine
                    await result
        except asyncio.CancelledError:
            if self._stopping:  # the process exits: the stream ends visibly, for every follower
                await self._end(emitter, "error", "the server shut down", reason="shutdown")
            else:
                await self._end(emitter, "error", "cancelled", reason="cancelled")
            raise
        except Exception as exc:
            error_id = new_error_id()
            log.exception("worker of stream %s failed (error_id %s)", emitter.stream_id, error_id)
            span = trace.get_current_span()  # the `stream publish` span, when traced
            span.record_exception(exc, attributes={ATTR_ERROR_ID: error_id})
            span.set_status(Status(StatusCode.ERROR, f"worker failed: {type(exc).__name__}"))
            details = failure_details(exc, error_id, expose=self._expose_errors)
            await self._end(emitter, "error", "worker failed", **details)
        else:
            await self._end(emitter, "complete")
        finally:
            self._emitters.discard(emitter)
            await emitter.drain()

    @staticmethod
    async def _end(emitter: SSEEmitter, kind: str, message: str = "", **details: Any) -> None:
        if emitter.closed:
            return
        try:
            if kind == "complete":
                await emitter.complete(success=True)
            else:
                await emitter.error(message, **details)
        except StreamClosedError:
            pass
        except Exception:
            log.exception("could not end stream %s", emitter.stream_id)

    async def aclose(self) -> None:
        """Stop: cancel running workers (their streams end with ``error {reason: shutdown}``)
        and wait up to 5 s for that. A sync worker is told through ``emitter.cancelled`` and
        not waited for: a thread cannot be cancelled, and a daemon thread does not hold the
        process's exit."""
        self._stopping = True
        for emitter in self._emitters:
            emitter.cancelled = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._tasks.cancel_all()
        try:
            await asyncio.wait_for(self._tasks.join(), _STOP_TIMEOUT)
        except TimeoutError:
            log.warning("workers still running at shutdown")
        if self._executor.busy:
            log.warning(
                "%d sync worker(s) still running at shutdown: their streams ended with an "
                "error event, their threads are abandoned",
                self._executor.busy,
            )
