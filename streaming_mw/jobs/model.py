"""Job value objects: the envelope a queue carries, a delivery of it, and a job's status."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

from .._types import random_id
from ..errors import ConfigurationError, InvalidEventError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import ChannelConfig

__all__ = [
    "Delivery",
    "JobEnvelope",
    "JobHandle",
    "JobState",
    "JobStatus",
    "QueueConfig",
    "new_job_id",
]

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def new_job_id() -> str:
    """A fresh job id: 128 random bits, URL-safe, never starting with ``-``."""
    return random_id()


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.DEAD, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobEnvelope:
    """What travels through the queue: the job, its stream, its owner and trace context."""

    job_id: str
    operation: str
    payload: Any
    stream_id: str
    owner: str | None = None
    traceparent: str | None = None
    enqueued_at: float = field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        try:
            return orjson.dumps(
                {
                    "job": self.job_id,
                    "op": self.operation,
                    "payload": self.payload,
                    "stream": self.stream_id,
                    "owner": self.owner,
                    "traceparent": self.traceparent,
                    "at": self.enqueued_at,
                }
            )
        except TypeError as exc:
            raise InvalidEventError(f"job payload is not JSON-serialisable: {exc}") from exc

    @classmethod
    def from_bytes(cls, raw: bytes) -> JobEnvelope:
        doc = orjson.loads(raw)
        return cls(
            doc["job"],
            doc["op"],
            doc["payload"],
            doc["stream"],
            doc.get("owner"),
            doc.get("traceparent"),
            float(doc.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a job to the worker ``consumer``; ``attempt`` counts from 1."""

    envelope: JobEnvelope
    delivery_id: str
    attempt: int
    consumer: str


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's state as the queue records it."""

    job_id: str
    state: JobState
    operation: str
    stream_id: str
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    updated_at: float = 0.0
    owner: str | None = None
    """The user the job was enqueued for (``enqueue(..., user_id=...)``); None: anyone's."""

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "state": self.state.value,
                "op": self.operation,
                "stream": self.stream_id,
                "attempts": self.attempts,
                "worker": self.worker,
                "error": self.error,
                "at": self.updated_at,
                "owner": self.owner,
            }
        )

    @classmethod
    def from_bytes(cls, job_id: str, raw: bytes) -> JobStatus:
        doc = orjson.loads(raw)
        return cls(
            job_id,
            JobState(doc["state"]),
            doc["op"],
            doc["stream"],
            int(doc.get("attempts", 0)),
            doc.get("worker"),
            doc.get("error"),
            float(doc.get("at", 0.0)),
            doc.get("owner"),
        )

    def visible_to(self, user_id: str | None) -> bool:
        """Whether ``user_id`` may see this job: its owner, anyone for a job without one, and
        a trusted caller (``None``) always."""
        return user_id is None or self.owner is None or self.owner == user_id

    def moved(self, state: JobState, **changes: Any) -> JobStatus:
        """A copy in ``state``, stamped now."""
        return replace(self, state=state, updated_at=time.time(), **changes)


@dataclass(frozen=True, slots=True)
class JobHandle:
    """What `enqueue` returns: follow the job with ``stream_response(handle.stream_id, ...)``."""

    job_id: str
    stream_id: str


@dataclass(slots=True)
class QueueConfig:
    """The seed's ``QueueConfig``. Times are in seconds.

    ``operations_registry`` maps dotted names to processors ``(payload, ctx)`` (sync functions run
    in threads, coroutine functions on the worker's loop); it may be filled after construction,
    as the seed does. A running job whose worker stops heartbeating for ``visibility_timeout`` is
    re-delivered; a job failing ``1 + max_retries`` times goes to the dead-letter stream.
    """

    redis_url: str | None = None
    operations_registry: dict[str, Callable[..., Any]] = field(default_factory=dict)
    queue_name: str = "default"
    visibility_timeout: float = 30.0
    max_retries: int = 3
    retry_backoff: float = 1.0
    key_prefix: str = "jobs:"
    channel_config: ChannelConfig | None = None
    """The web app's channel settings (key prefix, history); default `ChannelConfig()`."""
    max_payload_bytes: int = 1024 * 1024
    """The largest job envelope (payload included, serialised) `enqueue` accepts."""
    finished_job_ttl: float = 24 * 3600.0
    """How long the record of a finished (done or cancelled) job is kept."""
    expose_errors: bool = False
    """Put a failed attempt's exception text in the job's stream events (for development);
    off, they carry an ``error_id`` that the worker's log line names. `JobStatus.error` (seen
    by the job's owner and operators) has the text either way."""
    dead_job_ttl: float = 7 * 24 * 3600.0
    """How long the record of a dead-lettered job is kept (its dead letter stays in the
    dead-letter stream, capped at 10,000 entries)."""

    def __post_init__(self) -> None:
        for name in ("queue_name", "key_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _QUEUE_NAME.fullmatch(value):
                raise ConfigurationError(
                    f"QueueConfig.{name} must be 1-64 characters of [A-Za-z0-9_.:-], got {value!r}"
                )
        limit = self.max_payload_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(
                f"QueueConfig.max_payload_bytes must be an int >= 1, got {limit!r}"
            )
        for name in ("visibility_timeout", "retry_backoff", "finished_job_ttl", "dead_job_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"QueueConfig.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"QueueConfig.{name} must be > 0, got {value!r}")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"QueueConfig.max_retries must be an int >= 0, got {retries!r}"
            )

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1, 2, …): exponential, capped at 5 minutes."""
        return float(min(300.0, self.retry_backoff * 2 ** (attempt - 1)))
