"""The `JobQueue` contract: at-least-once delivery with heartbeats, retries and a dead letter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .model import Delivery, JobEnvelope, JobState, JobStatus

__all__ = ["JobQueue"]


@runtime_checkable
class JobQueue(Protocol):
    """A queue of jobs for workers: Redis (any number of processes) or memory (one process).

    A delivered job belongs to its worker while the worker heartbeats it; a job whose worker
    went silent for the visibility timeout is claimed by `reap` and delivered again, so no job
    is lost and none runs twice at the same time.
    """

    async def enqueue(self, envelope: JobEnvelope) -> None:
        """Queue a job (state ``queued``)."""
        ...

    async def fetch(self, consumer: str, wait: float) -> Delivery | None:
        """The next job for ``consumer``, waiting up to ``wait`` seconds; marks it running."""
        ...

    async def heartbeat(self, consumer: str, delivery: Delivery) -> bool:
        """Keep ``delivery`` owned by ``consumer``; False if another worker took it over."""
        ...

    async def finish(self, delivery: Delivery, state: JobState, error: str | None = None) -> None:
        """Acknowledge the delivery with a final state (done, failed or cancelled)."""
        ...

    async def retry_later(self, delivery: Delivery, delay: float, error: str) -> None:
        """Acknowledge this delivery and queue the job again after ``delay`` seconds."""
        ...

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        """Acknowledge the delivery and move the job to the dead-letter stream."""
        ...

    async def reap(self, consumer: str, min_idle: float, limit: int) -> list[Delivery]:
        """Claim for ``consumer`` up to ``limit`` deliveries nobody heartbeated for
        ``min_idle`` seconds."""
        ...

    async def promote_due(self) -> int:
        """Move retries whose delay has passed back to the ready queue; return how many."""
        ...

    async def status(self, job_id: str) -> JobStatus | None:
        """What the queue knows of ``job_id``."""
        ...

    async def request_cancel(self, job_id: str) -> bool:
        """Ask for ``job_id`` to be cancelled; False if it is unknown or already final."""
        ...

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` have a pending cancellation request."""
        ...

    async def dead_letters(self, count: int = 100) -> list[tuple[str, str]]:
        """The newest dead-lettered jobs as ``(job_id, error)``."""
        ...
