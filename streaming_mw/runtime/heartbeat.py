"""`LiveStreamHeartbeat`: each web process publishes its live streams to Redis, with a TTL.

Every ``interval`` seconds a process writes one small JSON record of its `StreamRegistry` to
``<key_prefix>procs:{<process>}`` (one key per process, its own hash tag, so it is safe on a
cluster) that expires after ``3 * interval``: a process that dies disappears by itself. At
stop the record is deleted. ``streaming-mw streams list`` reads these records. Without Redis
nothing is written: the registry of each process is only visible inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from .._redis import AsyncRedis
    from .._tasks import TaskSet
    from ..config import ChannelConfig
    from .registry import StreamRegistry

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAX_LISTED",
    "STOP_TIMEOUT",
    "HasRedis",
    "LiveStreamHeartbeat",
    "heartbeat_pattern",
    "process_name",
]

log = logging.getLogger("streaming_mw.heartbeat")

HEARTBEAT_INTERVAL = 5.0
"""Seconds between two records of one process; a record lives three times as long."""

STOP_TIMEOUT = 10.0
"""Seconds `LiveStreamHeartbeat.stop` waits for a beat in flight (socket timeouts are 5 s)."""

MAX_LISTED = 1000
"""Streams per record at most (the oldest first), so a record stays small."""


def process_name() -> str:
    """``host:pid:random``: unique per process, readable by an operator."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def heartbeat_pattern(key_prefix: str) -> str:
    """The ``SCAN MATCH`` pattern of every process record under ``key_prefix``."""
    return f"{key_prefix}procs:{{*}}"


class HasRedis(Protocol):
    """Where the current client is (the container's `Runtime`): None while on memory."""

    redis: AsyncRedis | None


class LiveStreamHeartbeat:
    """Writes this process's live streams to Redis every ``interval`` seconds."""

    def __init__(
        self,
        runtime: HasRedis,
        registry: StreamRegistry,
        channel: ChannelConfig,
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._runtime = runtime
        self._registry = registry
        self.interval = interval
        self.process = process_name()
        self.key = f"{channel.key_prefix}procs:{{{self.process}}}"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def record(self) -> dict[str, Any]:
        """What one beat writes: the process and its live streams, oldest first."""
        streams = self._registry.streams()[:MAX_LISTED]
        return {
            "process": self.process,
            "updated": time.time(),
            "count": self._registry.count(),
            "streams": [
                {
                    "stream_id": s.stream_id,
                    "path": s.path,
                    "user_id": s.user_id,
                    "started": s.started_at,
                    "events": s.events,
                    "last_event": s.last_event_at,
                }
                for s in streams
            ],
        }

    async def beat(self) -> bool:
        """Write the record once; False without Redis or when the write failed."""
        client = self._runtime.redis
        if client is None:
            return False
        ttl_ms = max(1, round(self.interval * 3000))
        try:
            await client.set(self.key, orjson.dumps(self.record()), px=ttl_ms)
        except (RedisError, OSError) as exc:
            log.debug("streaming_mw: live-stream heartbeat failed: %s", exc)
            return False
        return True

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)

    def start(self, tasks: TaskSet) -> None:
        """Start beating (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping = asyncio.Event()
            self._task = tasks.spawn(
                self._run(self._stopping), name="streaming_mw.heartbeat", detach=True
            )

    async def stop(self) -> None:
        """Stop beating and delete this process's record (while Redis is still open).

        The loop is told to stop and a beat in flight finishes: cancelling a Redis command
        midway is not reliable across redis-py releases (some have swallowed the
        cancellation). Only a beat stuck past ``STOP_TIMEOUT`` is cancelled.
        """
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
            except TimeoutError:
                task.cancel()
        client = self._runtime.redis
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.delete(self.key)
