"""`QueueWorker`: runs queued jobs and streams their events (seed: "Background Workers").

``asyncio.run(worker.start())`` runs until `stop` or SIGTERM/SIGINT. Each job's processor gets
``(payload, ctx)`` where ``ctx`` is a `StreamContext` on the job's stream; sync processors run
in the worker's threads, async ones on its loop. While a job runs its delivery is heartbeated;
a job that raises is retried with backoff and, after ``max_retries``, dead-lettered with a
terminal ``error`` on its stream. On stop, running jobs get ``visibility_timeout`` to finish;
the rest are left unacknowledged and another worker takes them over — never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import secrets
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Status, StatusCode

from ..channels import StreamState
from ..config import QueueRedisConfig, load_settings
from ..emitters import StreamContext
from ..errors import BackendUnavailableError, ConfigurationError
from ..jobs.model import JobState
from ..jobs.redis import RedisJobQueue
from ..scope import current_stream
from ..telemetry import (
    ATTR_ATTEMPT,
    ATTR_JOB_ID,
    ATTR_OPERATION,
    ATTR_OUTCOME,
    ATTR_STREAM_ID,
    Telemetry,
)
from .container import StreamingContainer, init_streaming
from .job_run import Running, end_stream, settle_failure, slot_or_stop
from .runner import is_async_callable
from .startup import start_container, stop_container

if TYPE_CHECKING:
    from ..channels import AsyncStreamChannel
    from ..jobs.base import JobQueue
    from ..jobs.model import Delivery, QueueConfig

__all__ = ["QueueWorker"]

log = logging.getLogger("streaming_mw.jobs")

_FETCH_WAIT = 1.0


class QueueWorker:
    """Runs up to ``max_workers`` jobs at once from ``config``'s queue."""

    def __init__(
        self,
        config: QueueConfig,
        max_workers: int = 4,
        *,
        name: str | None = None,
        queue: JobQueue | None = None,
        channel: AsyncStreamChannel | None = None,
        container: StreamingContainer | None = None,
        handle_signals: bool = True,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        self.config = config
        self.max_workers = max_workers
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._queue = queue
        self._channel = channel
        self._container = container
        self._own_container = False
        self._handle_signals = handle_signals
        self._running: dict[str, Running] = {}
        self._telemetry = container.telemetry() if container is not None else Telemetry()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(max_workers)
        self._executor: ThreadPoolExecutor | None = None
        self.jobs_done = 0

    @property
    def running_jobs(self) -> list[str]:
        """Ids of the jobs running now."""
        return [r.delivery.envelope.job_id for r in self._running.values()]

    async def stop(self) -> None:
        """Stop taking jobs; `start` returns once running jobs finished or were handed back."""
        self._stopping.set()

    async def start(self) -> None:
        """Run until `stop` (or SIGTERM/SIGINT in the main thread)."""
        queue, channel = await self._setup()
        self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="streaming_mw-job")
        restore = self._install_signals()
        log.info(
            "worker %s: queue %r, %d slot(s), operations: %s",
            self.name,
            self.config.queue_name,
            self.max_workers,
            ", ".join(sorted(self.config.operations_registry)) or "(none)",
        )
        maintenance = asyncio.get_running_loop().create_task(self._maintain(queue, channel))
        try:
            await self._serve(queue, channel)
        finally:
            await self._drain()
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
            restore()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._own_container and self._container is not None:
                await stop_container(self._container)
            log.info("worker %s stopped after %d job(s)", self.name, self.jobs_done)

    async def _setup(self) -> tuple[JobQueue, AsyncStreamChannel]:
        if self._queue is not None and self._channel is not None:
            return self._queue, self._channel
        container = self._container
        if container is None:
            container = self._container = StreamingContainer()
            url = self.config.redis_url or load_settings().redis_url
            # A blocking fetch holds one connection, each running job may publish on another.
            redis = QueueRedisConfig(url, max_connections=self.max_workers + 3) if url else None
            init_streaming(
                redis,
                channel_config=self.config.channel_config,
                mode="redis",
                container=container,
            )
        self._own_container = True
        await start_container(container)
        self._telemetry = container.telemetry()
        client = container.redis_client()
        if client is None:
            await stop_container(container)
            raise ConfigurationError(
                "a QueueWorker process needs Redis: set QueueConfig.redis_url or REDIS_URL"
            )
        queue = self._queue or RedisJobQueue(client, self.config)
        return queue, self._channel or container.stream_channel()

    def _install_signals(self) -> Any:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)

        def restore() -> None:
            for sig in signals:
                loop.remove_signal_handler(sig)

        return restore

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("worker %s: %s received, finishing running jobs", self.name, sig.name)
        self._stopping.set()

    async def _serve(self, queue: JobQueue, channel: AsyncStreamChannel) -> None:
        slots = self._slots
        backoff = 0.1
        while not self._stopping.is_set():
            if not await slot_or_stop(slots, self._stopping):
                break
            try:
                delivery = await queue.fetch(self.name, _FETCH_WAIT)
            except BackendUnavailableError as exc:
                slots.release()
                log.warning("worker %s: queue unavailable (%s); retrying", self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if delivery is None:
                slots.release()
                continue
            self._launch(queue, channel, delivery)

    def _launch(self, queue: JobQueue, channel: AsyncStreamChannel, delivery: Delivery) -> None:
        """Run ``delivery`` in a task; the caller holds one of the slots for it."""
        envelope = delivery.envelope
        ctx = StreamContext(envelope.stream_id, channel, owner=envelope.owner)
        task = asyncio.get_running_loop().create_task(
            self._execute(queue, delivery, ctx), name=f"job:{envelope.job_id}"
        )
        processor = self.config.operations_registry.get(envelope.operation)
        is_async = is_async_callable(processor)
        self._running[delivery.delivery_id] = Running(delivery, ctx, task, is_async)

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(delivery.delivery_id, None)
            self._slots.release()

        task.add_done_callback(done)

    async def _execute(self, queue: JobQueue, delivery: Delivery, ctx: StreamContext) -> None:
        envelope, attempt = delivery.envelope, delivery.attempt
        meta = await ctx.open()
        if meta.ended:
            # An earlier attempt ended the stream but died before acknowledging: settle it.
            state = JobState.DONE if meta.state is StreamState.DONE else JobState.FAILED
            await queue.finish(delivery, state)
            return
        processor = self.config.operations_registry.get(envelope.operation)
        if processor is None:
            error = f"unknown operation {envelope.operation!r}"
            await queue.dead_letter(delivery, error)
            await end_stream(ctx, error, reason="unknown_operation")
            return
        if attempt > 1 + self.config.max_retries:
            # Delivered again after every earlier attempt lost its worker (a crash each time).
            error = f"gave up after {attempt - 1} attempt(s) whose worker stopped responding"
            log.error("job %s: %s; dead-lettered", envelope.job_id, error)
            await queue.dead_letter(delivery, error)
            await end_stream(ctx, f"job failed: {error}", reason="dead_letter")
            return
        log.info(
            "worker %s: job %s %s attempt %d",
            self.name,
            envelope.job_id,
            envelope.operation,
            attempt,
        )
        if attempt > 1:
            await ctx.log(f"attempt {attempt} of {1 + self.config.max_retries}", "warning")
        attributes = {
            ATTR_JOB_ID: envelope.job_id,
            ATTR_OPERATION: envelope.operation,
            ATTR_STREAM_ID: envelope.stream_id,
            ATTR_ATTEMPT: attempt,
            "messaging.destination.name": self.config.queue_name,
        }
        started = time.monotonic()
        name = f"{self.config.queue_name} process"
        with self._telemetry.consumer(name, envelope.traceparent, attributes) as span:
            outcome = await self._run(queue, delivery, ctx, processor)
            span.set_attribute(ATTR_OUTCOME, outcome)
            if outcome == "dead_letter":
                span.set_status(Status(StatusCode.ERROR, outcome))
        self._telemetry.job_duration.record(
            time.monotonic() - started, {ATTR_OPERATION: envelope.operation, ATTR_OUTCOME: outcome}
        )

    async def _run(
        self, queue: JobQueue, delivery: Delivery, ctx: StreamContext, processor: Any
    ) -> str:
        """Run the processor and settle the delivery; return the outcome."""
        try:
            await self._call(processor, delivery.envelope.payload, ctx)
        except asyncio.CancelledError:
            running = self._running.get(delivery.delivery_id)
            if running is None or running.lost or not running.cancel_requested:
                raise  # shutting down or lost: leave it unacknowledged for another worker
            await self._cancelled(queue, delivery, ctx)
            return "cancelled"
        except Exception as exc:
            if await self._lost_now(queue, delivery):
                return "lost"
            return await settle_failure(queue, delivery, ctx, exc, self.config)
        if await self._lost_now(queue, delivery):
            return "lost"
        running = self._running.get(delivery.delivery_id)
        if running is not None and running.cancel_requested:
            await self._cancelled(queue, delivery, ctx)
            return "cancelled"
        if not ctx.closed:
            await ctx.complete(success=True)
        state = JobState.FAILED if ctx.terminal == "error" else JobState.DONE
        await queue.finish(delivery, state)
        self.jobs_done += 1
        return state.value

    async def _lost_now(self, queue: JobQueue, delivery: Delivery) -> bool:
        """Ask the queue whether this worker still owns ``delivery`` (a blocked loop may not
        have heartbeated in time); a lost job is left to its new owner, untouched."""
        running = self._running.get(delivery.delivery_id)
        if running is None:
            return False
        if not running.lost:
            try:
                running.lost = not await queue.heartbeat(self.name, delivery)
            except BackendUnavailableError:
                return False  # cannot tell: settling checks ownership in Lua anyway
            if running.lost:
                running.ctx.detach()
        if running.lost:
            log.warning(
                "worker %s: job %s was taken over meanwhile; leaving it to its new worker",
                self.name,
                delivery.envelope.job_id,
            )
        return running.lost

    async def _call(self, processor: Any, payload: Any, ctx: StreamContext) -> None:
        current_stream.set(ctx.stream_id)  # this job's task context: log shipping
        if is_async_callable(processor):
            await processor(payload, ctx)
            return
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, processor, payload, ctx)
        result = await loop.run_in_executor(self._executor, call)
        if inspect.isawaitable(result):
            await result

    async def _cancelled(self, queue: JobQueue, delivery: Delivery, ctx: StreamContext) -> None:
        await queue.finish(delivery, JobState.CANCELLED, "cancelled")
        await end_stream(ctx, "cancelled", reason="cancelled")

    async def _maintain(self, queue: JobQueue, channel: AsyncStreamChannel) -> None:
        """Heartbeat running jobs, honour cancellations, promote retries, reap silent workers."""
        interval = min(1.0, self.config.visibility_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat(queue)
                await queue.promote_due()
                await self._reap(queue, channel)
            except BackendUnavailableError as exc:
                log.warning("worker %s: maintenance skipped (%s)", self.name, exc)

    async def _reap(self, queue: JobQueue, channel: AsyncStreamChannel) -> None:
        free = self.max_workers - len(self._running)
        if self._stopping.is_set() or free <= 0:
            return
        for delivery in await queue.reap(self.name, self.config.visibility_timeout, free):
            log.warning(
                "worker %s: took over job %s from a silent worker (attempt %d)",
                self.name,
                delivery.envelope.job_id,
                delivery.attempt,
            )
            await self._slots.acquire()  # free > 0: does not wait
            self._launch(queue, channel, delivery)

    async def _heartbeat(self, queue: JobQueue) -> None:
        running = list(self._running.values())
        cancels = await queue.cancel_requested([r.delivery.envelope.job_id for r in running])
        for job in running:
            job_id = job.delivery.envelope.job_id
            if not await queue.heartbeat(self.name, job.delivery):
                log.warning("worker %s: job %s was taken over; stopping it", self.name, job_id)
                job.lost = True
                job.interrupt()
            elif job_id in cancels and not job.cancel_requested:
                log.info("worker %s: cancelling job %s on request", self.name, job_id)
                job.cancel_requested = True
                job.interrupt()

    async def _drain(self) -> None:
        if not self._running:
            return
        grace = self.config.visibility_timeout
        log.info(
            "worker %s: waiting up to %.0fs for %d job(s)", self.name, grace, len(self._running)
        )
        tasks = {r.task: r for r in self._running.values()}
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            tasks[task].lost = True  # unacknowledged: another worker takes it over
            tasks[task].interrupt()
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
