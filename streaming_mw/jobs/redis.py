"""Redis job queue (DESIGN §3, jobs): a Redis Stream consumer group per queue.

Keys of one queue share its hash tag ``{<queue>}``:

* ``<prefix>{<queue>}:ready`` — Stream of job ids; consumer group ``workers``;
* ``<prefix>{<queue>}:delayed`` — sorted set of job ids waiting for a retry (score = due, ms);
* ``<prefix>{<queue>}:dead`` — Stream of dead-lettered jobs (``j`` = id, ``error``);
* ``<prefix>{<queue>}:cancel`` — set of running jobs asked to stop;
* ``<prefix>{<queue>}:job:<id>`` — hash: ``env`` (envelope), ``op``, ``stream``, ``state``,
  ``attempts``, ``worker``, ``error``, ``at``; kept ``JOB_TTL`` after the last change.

Workers ``XREADGROUP``; a running job is heartbeated with ``XCLAIM … JUSTID`` by its owner only;
``XAUTOCLAIM`` hands jobs whose worker went silent to another. Every state change that depends
on owning a delivery checks ownership in Lua first, so a worker that lost a job cannot ack it.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .._redis import unavailable_as_backend_error
from .model import Delivery, JobEnvelope, JobState, JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._redis import AsyncRedis
    from .model import QueueConfig

__all__ = ["JOB_TTL", "RedisJobQueue"]

GROUP = "workers"
JOB_TTL = 7 * 24 * 3600
"""How long the record of a job not yet finished is kept after its last change."""


def _owner(fields: Mapping[Any, Any]) -> str | None:
    """The job's owner: its own field, or (records written before it existed) the envelope's."""
    if b"owner" in fields:
        return _text(fields[b"owner"]) or None
    env = fields.get(b"env")
    return JobEnvelope.from_bytes(env).owner if env else None


def _seconds(ttl: float) -> int:
    return max(1, math.ceil(ttl))


_OWNED = """
local p = redis.call('XPENDING', KEYS[2], 'workers', ARGV[1], ARGV[1], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
"""

# KEYS: job, ready ; ARGV: envelope, op, stream, now, job id, ttl, owner -> 1, or 0 when the job
# exists
# (a retried enqueue whose first copy ran: the job is not queued twice)
ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'env', ARGV[1], 'op', ARGV[2], 'stream', ARGV[3],
           'state', 'queued', 'attempts', 0, 'at', ARGV[4], 'owner', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('XADD', KEYS[2], '*', 'j', ARGV[5])
return 1
"""

# KEYS: job, ready ; ARGV: entry id, worker, now -> {attempts, envelope} | {-1}
START = """
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'cancelled' or state == 'done' or state == 'dead' then
  redis.call('XACK', KEYS[2], 'workers', ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {-1}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2], 'at', ARGV[3])
return {attempts, redis.call('HGET', KEYS[1], 'env')}
"""

# KEYS: job, ready ; ARGV: entry id, worker
HEARTBEAT = (
    _OWNED
    + """
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
"""
)

# KEYS: job, ready, cancel ; ARGV: entry id, worker, state, error, now, job id, ttl
FINISH = (
    _OWNED
    + """
redis.call('XACK', KEYS[2], 'workers', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'error', ARGV[4], 'at', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('SREM', KEYS[3], ARGV[6])
return 1
"""
)

# KEYS: job, ready, delayed ; ARGV: entry id, worker, delay ms, error, now, job id
RETRY = (
    _OWNED
    + """
redis.call('XACK', KEYS[2], 'workers', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[3], due, ARGV[6])
redis.call('HSET', KEYS[1], 'state', 'retrying', 'error', ARGV[4], 'at', ARGV[5])
return 1
"""
)

# KEYS: job, ready, dead, cancel ; ARGV: entry id, worker, error, now, job id, ttl
DEAD = (
    _OWNED
    + """
redis.call('XACK', KEYS[2], 'workers', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'j', ARGV[5], 'error', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'dead', 'error', ARGV[3], 'at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SREM', KEYS[4], ARGV[5])
return 1
"""
)

# KEYS: delayed, ready -> how many were moved
PROMOTE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'j', id)
end
return #due
"""

# KEYS: job, cancel ; ARGV: job id, now -> 0 unknown/final, 1 cancelled while waiting, 2 asked
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'done' or state == 'failed' or state == 'dead'
   or state == 'cancelled' then return 0 end
if state == 'running' then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 2
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'at', ARGV[2])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobQueue:
    """At-least-once job delivery to any number of worker processes sharing one Redis."""

    def __init__(self, client: AsyncRedis, config: QueueConfig) -> None:
        self.config = config
        self._client = client
        tag = f"{config.key_prefix}{{{config.queue_name}}}"
        self._tag = tag
        self.ready, self.delayed = f"{tag}:ready", f"{tag}:delayed"
        self.dead, self.cancel_set = f"{tag}:dead", f"{tag}:cancel"
        scripts = {
            "enqueue": ENQUEUE,
            "start": START,
            "heartbeat": HEARTBEAT,
            "finish": FINISH,
            "retry": RETRY,
            "dead": DEAD,
            "promote": PROMOTE,
            "cancel": CANCEL,
        }
        self._scripts = {name: client.register_script(body) for name, body in scripts.items()}
        self._group_ready = False

    def job_key(self, job_id: str) -> str:
        return f"{self._tag}:job:{job_id}"

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with unavailable_as_backend_error(f"job {name}"):
            return await self._scripts[name](keys=keys, args=args)

    async def ensure_group(self) -> None:
        """Create the consumer group (once; idempotent across processes)."""
        if self._group_ready:
            return
        try:
            with unavailable_as_backend_error("job queue setup"):
                await self._client.xgroup_create(self.ready, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def enqueue(self, envelope: JobEnvelope) -> None:
        await self.ensure_group()
        args = [
            envelope.to_bytes(),
            envelope.operation,
            envelope.stream_id,
            repr(time.time()),
            envelope.job_id,
            JOB_TTL,
            envelope.owner or "",
        ]
        await self._run("enqueue", [self.job_key(envelope.job_id), self.ready], args)

    async def _start(self, consumer: str, entry_id: str, job_id: str) -> Delivery | None:
        keys = [self.job_key(job_id), self.ready]
        result = await self._run("start", keys, [entry_id, consumer, repr(time.time())])
        if int(result[0]) < 0:
            return None
        return Delivery(JobEnvelope.from_bytes(result[1]), entry_id, int(result[0]), consumer)

    async def _regroup_on_nogroup(self, exc: ResponseError) -> None:
        """Redis lost the group (restarted without persistence): create it again."""
        if "NOGROUP" not in str(exc):
            raise exc
        self._group_ready = False
        await self.ensure_group()

    async def fetch(self, consumer: str, wait: float) -> Delivery | None:
        await self.ensure_group()
        block = max(1, round(wait * 1000))
        try:
            with unavailable_as_backend_error("job fetch"):
                answer: Any = await self._client.xreadgroup(
                    GROUP, consumer, {self.ready: ">"}, count=1, block=block
                )
        except ResponseError as exc:
            await self._regroup_on_nogroup(exc)
            return None
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                return await self._start(consumer, _text(entry_id), _text(fields[b"j"]))
        return None

    async def heartbeat(self, consumer: str, delivery: Delivery) -> bool:
        keys = [self.job_key(delivery.envelope.job_id), self.ready]
        return bool(await self._run("heartbeat", keys, [delivery.delivery_id, consumer]))

    async def finish(self, delivery: Delivery, state: JobState, error: str | None = None) -> None:
        job_id = delivery.envelope.job_id
        keys = [self.job_key(job_id), self.ready, self.cancel_set]
        worker = delivery.consumer
        args = [delivery.delivery_id, worker, state.value, error or "", repr(time.time())]
        await self._run("finish", keys, [*args, job_id, _seconds(self.config.finished_job_ttl)])

    async def retry_later(self, delivery: Delivery, delay: float, error: str) -> None:
        job_id = delivery.envelope.job_id
        keys = [self.job_key(job_id), self.ready, self.delayed]
        worker = delivery.consumer
        args = [delivery.delivery_id, worker, max(1, round(delay * 1000)), error]
        await self._run("retry", keys, [*args, repr(time.time()), job_id])

    async def dead_letter(self, delivery: Delivery, error: str) -> None:
        job_id = delivery.envelope.job_id
        keys = [self.job_key(job_id), self.ready, self.dead, self.cancel_set]
        worker = delivery.consumer
        ttl = _seconds(self.config.dead_job_ttl)
        args = [delivery.delivery_id, worker, error, repr(time.time()), job_id, ttl]
        await self._run("dead", keys, args)

    async def reap(self, consumer: str, min_idle: float, limit: int) -> list[Delivery]:
        await self.ensure_group()
        idle_ms = max(1, round(min_idle * 1000))
        try:
            with unavailable_as_backend_error("job reap"):
                answer = await self._client.xautoclaim(
                    self.ready, GROUP, consumer, idle_ms, "0-0", count=limit
                )
        except ResponseError as exc:
            await self._regroup_on_nogroup(exc)
            return []
        claimed: list[Delivery] = []
        for entry_id, fields in answer[1] if answer else ():
            if fields:
                delivery = await self._start(consumer, _text(entry_id), _text(fields[b"j"]))
                if delivery is not None:
                    claimed.append(delivery)
        return claimed

    async def promote_due(self) -> int:
        return int(await self._run("promote", [self.delayed, self.ready], []))

    async def status(self, job_id: str) -> JobStatus | None:
        with unavailable_as_backend_error("job status"):
            fields = await self._client.hgetall(self.job_key(job_id))
        if not fields:
            return None
        doc = {_text(k): _text(v) for k, v in fields.items() if k != b"env"}
        return JobStatus(
            job_id,
            JobState(doc["state"]),
            doc["op"],
            doc["stream"],
            int(doc.get("attempts", 0)),
            doc.get("worker") or None,
            doc.get("error") or None,
            float(doc.get("at", 0.0)),
            _owner(fields),
        )

    async def request_cancel(self, job_id: str) -> bool:
        keys = [self.job_key(job_id), self.cancel_set]
        return int(await self._run("cancel", keys, [job_id, repr(time.time())])) > 0

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        with unavailable_as_backend_error("job cancel check"):
            flags = await self._client.smismember(self.cancel_set, job_ids)
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    async def dead_letters(self, count: int = 100) -> list[tuple[str, str]]:
        with unavailable_as_backend_error("dead-letter read"):
            entries: Any = await self._client.xrevrange(self.dead, count=count)
        return [(_text(f[b"j"]), _text(f.get(b"error", b""))) for _, f in entries]
