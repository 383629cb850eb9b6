"""In-process job queue: the same contract as Redis for workers living in one process (used
when there is no Redis, so an app written for the queue pattern still works in development)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .model import Delivery, JobEnvelope, JobState, JobStatus

if TYPE_CHECKING:
    from .model import QueueConfig

__all__ = ["MemoryJobQueue"]


@dataclass(slots=True)
class _Job:
    envelope: JobEnvelope
    state: JobState = JobState.QUEUED
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Pending:
    job_id: str
    consumer: str
    beat: float


class MemoryJobQueue:
    """Jobs in dicts and an asyncio queue; waits without polling."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._next_sweep = 0.0
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._jobs: dict[str, _Job] = {}
        self._pending: dict[str, _Pending] = {}
        self._delayed: list[tuple[float, str]] = []
        self._cancel: set[str] = set()
        self._dead: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    async def enqueue(self, envelope: JobEnvelope) -> None:
        if envelope.job_id in self._jobs:
            return  # enqueued already: a job id is queued once
        self._jobs[envelope.job_id] = _Job(envelope)
        self._ready.put_nowait(envelope.job_id)

    def _start(self, consumer: str, job_id: str) -> Delivery | None:
        job = self._jobs.get(job_id)
        if job is None or job.state in (JobState.CANCELLED, JobState.DONE, JobState.DEAD):
            return None
        job.attempts += 1
        job.state, job.worker, job.at = JobState.RUNNING, consumer, time.time()
        delivery_id = f"{next(self._ids)}-0"
        self._pending[delivery_id] = _Pending(job_id, consumer, time.monotonic())
        return Delivery(job.envelope, delivery_id, job.attempts, consumer)

    async def fetch(self, consumer: str, wait: float) -> Delivery | None:
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    job_id = await self._ready.get()
            except TimeoutError:
                return None
            delivery = self._start(consumer, job_id)
            if delivery is not None:
                return delivery
        return None

    def _owned(self, delivery: Delivery) -> _Pending | None:
        pending = self._pending.get(delivery.delivery_id)
        return pending if pending is not None and pending.consumer == delivery.consumer else None

    async def heartbeat(self, consumer: str, delivery: Delivery) -> bool:
        pending = self._owned(delivery)
        if pending is None or pending.consumer != consumer:
            return False
        pending.beat = time.monotonic()
        return True

    def _settle(self, delivery: Delivery, state: JobState, error: str | None) -> _Job | None:
        if self._owned(delivery) is None:
            return None
        del self._pending[delivery.delivery_id]
        job = self._jobs[delivery.envelope.job_id]
        job.state, job.error, job.at = state, error, time.time()
        self._cancel.discard(job.envelope.job_id)
        self._forget_expired(job.at)
        return job

    def _forget_expired(self, now: float) -> None:
        """Drop the records of jobs finished longer ago than their retention (a sweep a minute
        at most, so a finish stays O(1) on average)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(60.0, self.config.finished_job_ttl, self.config.dead_job_ttl)
        ttl = {
            JobState.DONE: self.config.finished_job_ttl,
            JobState.CANCELLED: self.config.finished_job_ttl,
            JobState.DEAD: self.config.dead_job_ttl,
        }
        expired = [
            job_id
            for job_id, job in self._jobs.items()
            if job.state in ttl and now - job.at > ttl[job.state]
        ]
        for job_id in expired:
            del self._jobs[job_id]

    async def finish(self, delivery: Delivery, state: JobState, error: str | None = None) -> None:
        self._settle(delivery, state, error)

    async def retry_later(self, delivery: Delivery, delay: float, error: str) -> None:
        if self._settle(delivery, JobState.RETRYING, error) is not None:
            heapq.heappush(self._delayed, (time.monotonic() + delay, delivery.envelope.job_id))

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        if self._settle(delivery, JobState.DEAD, error) is not None:
            self._dead.append((delivery.envelope.job_id, error))

    async def reap(self, consumer: str, min_idle: float, limit: int) -> list[Delivery]:
        now = time.monotonic()
        stale = [d for d, p in self._pending.items() if now - p.beat >= min_idle][:limit]
        claimed = []
        for delivery_id in stale:
            pending = self._pending.pop(delivery_id)
            delivery = self._start(consumer, pending.job_id)
            if delivery is not None:
                claimed.append(delivery)
        return claimed

    async def promote_due(self) -> int:
        now, moved = time.monotonic(), 0
        while self._delayed and self._delayed[0][0] <= now:
            _, job_id = heapq.heappop(self._delayed)
            self._ready.put_nowait(job_id)
            moved += 1
        return moved

    async def status(self, job_id: str) -> JobStatus | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        envelope = job.envelope
        return JobStatus(
            job_id,
            job.state,
            envelope.operation,
            envelope.stream_id,
            job.attempts,
            job.worker,
            job.error,
            job.at,
            envelope.owner,
        )

    async def request_cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.state.final:
            return False
        if job.state is JobState.RUNNING:
            self._cancel.add(job_id)
        else:
            job.state, job.at = JobState.CANCELLED, time.time()
        return True

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        return self._cancel.intersection(job_ids)

    async def dead_letters(self, count: int = 100) -> list[tuple[str, str]]:
        return list(reversed(self._dead[-count:]))
