"""The web side of jobs: `init_jobs`, `enqueue`, `job_status`, `cancel`.

``enqueue`` uses the Redis that `init_streaming` or ``REDIS_URL`` configured. Without Redis the
job runs on workers inside this process (a memory queue), so an app written for the queue
pattern still works in development.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .._types import validate_stream_id
from ..emitters import new_stream_id
from ..errors import PayloadTooLargeError, StreamClosedError, StreamNotFoundError
from ..events import EventType, StreamEvent
from ..jobs.model import JobEnvelope, JobHandle, JobState, new_job_id
from ..telemetry import ATTR_JOB_ID, ATTR_OPERATION, ATTR_STREAM_ID, inject_traceparent
from .container import current_container
from .queue_worker import QueueWorker
from .startup import ensure_started

if TYPE_CHECKING:
    from ..jobs.base import JobQueue
    from ..jobs.model import JobStatus, QueueConfig
    from ..telemetry import Telemetry
    from .container import Runtime, StreamingContainer

__all__ = ["LOCAL_WORKERS", "cancel", "enqueue", "init_jobs", "job_status"]

log = logging.getLogger("streaming_mw.jobs")

LOCAL_WORKERS = 4
"""Concurrent jobs of the in-process worker used without Redis."""


def init_jobs(config: QueueConfig, *, container: StreamingContainer | None = None) -> None:
    """Tell the app which queue to use and, for in-process workers, which operations exist."""
    (container or current_container()).queue_config.set_provides(config)


async def _queue(container: StreamingContainer) -> JobQueue:
    await ensure_started(container)
    queue: JobQueue = container.job_queue()
    return queue


async def enqueue(
    operation: str,
    payload: Any,
    *,
    user_id: str | None = None,
    stream_id: str | None = None,
) -> JobHandle:
    """Queue ``operation(payload, ctx)`` and create the stream its events go to.

    Follow it with ``stream_response(handle.stream_id, request)``.
    """
    container = current_container()
    queue = await _queue(container)
    stream_id = validate_stream_id(stream_id) if stream_id is not None else new_stream_id()
    job_id = new_job_id()
    telemetry: Telemetry = container.telemetry()
    queue_name = container.queue_config().queue_name
    attributes = {
        ATTR_JOB_ID: job_id,
        ATTR_OPERATION: operation,
        ATTR_STREAM_ID: stream_id,
        "messaging.destination.name": queue_name,
    }
    with telemetry.producer(f"{queue_name} publish", attributes):
        envelope = JobEnvelope(job_id, operation, payload, stream_id, user_id, inject_traceparent())
        # Refuse a payload that cannot travel, or is too large, before anything is stored.
        size = len(envelope.to_bytes())
        limit = container.queue_config().max_payload_bytes
        if size > limit:
            raise PayloadTooLargeError(size, limit)
        await container.stream_channel().create(stream_id, owner=user_id, job_id=job_id)
        await queue.enqueue(envelope)
    runtime: Runtime = container.runtime()
    if runtime.backend == "memory":
        _ensure_local_worker(container, runtime)
    return JobHandle(envelope.job_id, stream_id)


def _ensure_local_worker(container: StreamingContainer, runtime: Runtime) -> None:
    if runtime.local_worker is not None:
        return
    worker = QueueWorker(
        container.queue_config(),
        LOCAL_WORKERS,
        name="in-process",
        queue=container.job_queue(),
        channel=container.stream_channel(),
        container=container,
        handle_signals=False,
    )
    log.info("streaming_mw: running queued jobs in this process (no Redis)")
    task = runtime.tasks.spawn(worker.start(), name="streaming_mw.local_worker")
    runtime.local_worker = worker

    async def stop() -> None:
        await worker.stop()
        await task
        runtime.local_worker = None

    runtime.closers.append(stop)


async def job_status(job_id: str, *, user_id: str | None) -> JobStatus | None:
    """What the queue knows of ``job_id``, asked by ``user_id``.

    None if the job is unknown, expired, or owned by another user: another user's job is
    reported exactly as a job that does not exist, so its id reveals nothing. ``user_id=None``
    is a trusted caller (an operator tool) that sees every job; a route passes its caller.
    """
    status = await (await _queue(current_container())).status(job_id)
    return status if status is not None and status.visible_to(user_id) else None


async def cancel(job_id: str, *, user_id: str | None) -> bool:
    """Cancel ``job_id`` for ``user_id``: a waiting job never runs, a running one is told to
    stop (its ``ctx`` reports ``cancelled``). False if the job is unknown, already over, or
    owned by another user (``user_id=None``: a trusted caller, any job)."""
    container = current_container()
    queue = await _queue(container)
    before = await queue.status(job_id)
    if before is None or not before.visible_to(user_id):
        return False
    if not await queue.request_cancel(job_id):
        return False
    status = await queue.status(job_id)
    if status is not None and status.state is JobState.CANCELLED:
        # No worker will touch it again: end its stream here.
        event = StreamEvent(EventType.ERROR, {"message": "cancelled", "reason": "cancelled"})
        with contextlib.suppress(StreamClosedError, StreamNotFoundError):
            await container.stream_channel().publish(status.stream_id, event)
    return True
