"""`ProducingBackend`: what a process that generates a resumable stream needs of a channel.

A resumable direct stream (``resumable_response``) numbers its events itself, hands them to its
first client at once, and records them in the stream's history behind the hot path, a small
batch at a time (`append_batch`, idempotent per `ProducerMark` like `append`). While its
generator runs, the generating process keeps a heartbeat (`beat`: one round trip for all of
its streams); followers on any process ask `producer_alive` when the stream goes quiet, and
end the stream with ``producer_lost`` once the heartbeat has expired. `request_cancel` is the
stop button of another request or process, seen by the generating process's next `beat`;
`followers` counts the clients following the stream live (its subscribers), which keep an
abandoned generation alive past its grace.

Redis keys, beside the stream's own (same hash tag, same slot):

* ``<prefix>{<id>}:producer`` — the heartbeat, ``PX`` = its TTL, refreshed while generating;
* ``<prefix>{<id>}:cancel`` — set by `request_cancel`;
* the meta hash's ``producer`` field marks a generated stream.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeout

from .._redis import unavailable_as_backend_error
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    StreamClosedError,
    StreamExistsError,
    StreamingError,
    StreamNotFoundError,
)
from ..events import new_epoch
from .base import ProducerMark, StreamMeta, StreamState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._redis import AsyncRedis
    from ..config import ChannelConfig

__all__ = [
    "APPEND_BATCH",
    "Batch",
    "ProducingBackend",
    "RedisProducing",
    "check_append",
    "producing",
]


class Batch(NamedTuple):
    """One `ProducingBackend.append_batch` call, as data (see `append_batches`)."""

    stream_id: str
    payloads: Sequence[bytes]
    final_state: StreamState | None
    producer: ProducerMark


@runtime_checkable
class ProducingBackend(Protocol):
    """The calls a resumable stream's producer and its followers make (see the module)."""

    async def append_batch(
        self,
        stream_id: str,
        payloads: Sequence[bytes],
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark,
    ) -> int:
        """Append ``payloads`` in order, notify subscribers of each; return the first ``seq``.

        ``final_state`` applies after the last one and ends the producing, as `stop_producing`
        does (the heartbeat and any cancel request are dropped, in the same step). A repeat of
        the producer's last batch (same mark, same length) changes nothing and returns the same
        first ``seq``.
        """
        ...

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | StreamingError]:
        """`append_batch` for each of ``batches`` (of one stream or several), in order, in one
        round trip: each one's first ``seq``, or the error it met (`StreamClosedError`, ...).
        `BackendUnavailableError` (raised) when the round trip itself failed."""
        ...

    async def producer_progress(self, stream_id: str, producer_id: str) -> int:
        """The number (`ProducerMark.seq`) of the last batch of ``producer_id`` the stream
        stored, 0 for none: where to start again after a round trip whose answers were lost."""
        ...

    async def create_generated(
        self, stream_id: str, *, owner: str, ttl: float, epoch: str | None = None
    ) -> StreamMeta:
        """Create ``stream_id``, owned by ``owner``, as a generated stream with a heartbeat of
        ``ttl`` seconds, in one atomic step; `StreamExistsError` if the id is taken (a stream,
        running or ended, or what is left of its history), which is then left untouched.
        ``epoch``: the producer's own (it numbers events before the stream exists), else new."""
        ...

    async def beat(self, stream_ids: Sequence[str], ttl: float | None) -> set[str]:
        """Refresh the heartbeats of ``stream_ids`` (unless ``ttl`` is None), in one round trip;
        return those whose cancel was requested."""
        ...

    async def stop_producing(self, stream_id: str) -> None:
        """The generator has ended: drop the heartbeat and any cancel request."""
        ...

    async def producer_alive(self, stream_id: str) -> bool | None:
        """None if the stream is not a generated one, else whether its heartbeat is fresh."""
        ...

    async def request_cancel(self, stream_id: str) -> None:
        """Ask the generating process, wherever it runs, to stop."""
        ...

    async def followers(self, stream_id: str) -> int:
        """How many clients follow the stream live, across every process."""
        ...


_PRODUCING: dict[type, bool] = {}


def producing(backend: object) -> ProducingBackend | None:
    """``backend`` as a `ProducingBackend`, or None. The structural check of a runtime Protocol
    reads every attribute (tens of microseconds, on each resumable request): it is made once
    per backend class."""
    kind = type(backend)
    known = _PRODUCING.get(kind)
    if known is None:
        known = _PRODUCING[kind] = isinstance(backend, ProducingBackend)
    return cast("ProducingBackend", backend) if known else None


# KEYS: meta, events, producer heartbeat, cancel flag ; ARGV: maxlen, final state or '', ttl ms,
# live channel, producer id, producer seq, payload... -> first seq, or -1 (no such stream), -2
# (ended), -3 (out of order). A final state also drops the heartbeat and the cancel flag.
# The stream is trimmed once per batch (exactly: the script is atomic, nobody sees the excess).
# The notifications are published only when the live channel has a subscriber: a follower
# subscribes (confirmed) before it reads history, so one that subscribes later finds the batch
# there.
APPEND_BATCH = """
local head = redis.call('HMGET', KEYS[1], 'state', 'epoch')
local state = head[1]
if not state then return -1 end
local n = #ARGV - 6
local pkey = 'p:' .. ARGV[5]
local last = redis.call('HGET', KEYS[1], pkey)
if last then
  local sep = string.find(last, ':', 1, true)
  local last_pseq = tonumber(string.sub(last, 1, sep - 1))
  local pseq = tonumber(ARGV[6])
  if pseq == last_pseq then return tonumber(string.sub(last, sep + 1)) - n + 1 end
  if pseq < last_pseq then return -3 end
end
if state ~= 'running' then return -2 end
local top = redis.call('HINCRBY', KEYS[1], 'seq', n)
local first = top - n + 1
for i = 7, #ARGV do
  redis.call('XADD', KEYS[2], (first + i - 7) .. '-0', 'e', ARGV[i])
end
redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[1])
if redis.call('PUBSUB', 'NUMSUB', ARGV[4])[2] > 0 then
  for i = 7, #ARGV do
    redis.call('PUBLISH', ARGV[4], head[2] .. ' ' .. (first + i - 7) .. ' ' .. ARGV[i])
  end
end
redis.call('HSET', KEYS[1], pkey, ARGV[6] .. ':' .. top)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
  redis.call('DEL', KEYS[3], KEYS[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return first
"""

APPEND_BATCH_SHARDED = APPEND_BATCH.replace(
    "redis.call('PUBLISH',", "redis.call('SPUBLISH',"
).replace("'PUBSUB', 'NUMSUB'", "'PUBSUB', 'SHARDNUMSUB'")
"""`APPEND_BATCH` for a Redis Cluster: shard channels (the script runs on the slot's master)."""


# KEYS: meta, events, producer ; ARGV: epoch, owner, created, ttl ms, heartbeat ms -> 1, or 0
# when the id is taken (its meta or its history exists: nothing is changed).
CREATE_GENERATED = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'owner', ARGV[2], 'state', 'running',
           'created', ARGV[3], 'seq', 0, 'job', '', 'producer', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def check_append(stream_id: str, result: int) -> int:
    """An append script's answer: its ``seq``, or the error its negative code stands for."""
    if result == -1:
        raise StreamNotFoundError(stream_id)
    if result == -2:
        raise StreamClosedError(stream_id)
    if result == -3:
        raise ConfigurationError(f"a producer appended out of order on {stream_id}")
    return result


def _answer(stream_id: str, reply: object) -> int | StreamingError:
    if isinstance(reply, Exception):
        if isinstance(reply, (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeout)):
            raise BackendUnavailableError(f"Redis unavailable during event publish: {reply}")
        return ConfigurationError(f"history append on {stream_id} failed: {reply}")
    try:
        return check_append(stream_id, int(reply))  # type: ignore[call-overload]
    except StreamingError as exc:
        return exc


class RedisProducing:
    """`ProducingBackend` over Redis: mixed into `RedisChannelBackend`."""

    config: ChannelConfig
    _client: AsyncRedis
    _sharded: bool

    def _key(self, stream_id: str, name: str) -> str:
        return f"{self.config.key_prefix}{{{stream_id}}}:{name}"

    def _batch_script(self) -> object:
        script = getattr(self, "_append_batch", None)
        if script is None:
            source = APPEND_BATCH_SHARDED if self._sharded else APPEND_BATCH
            script = self._append_batch = self._client.register_script(source)
        return script

    def _batch_call(self, batch: Batch) -> list[bytes | str | int]:
        """``EVALSHA`` arguments after the script's sha: numkeys, keys, args."""
        stream_id, payloads, final_state, producer = batch
        ttl = _ms(self.config.history_ttl_seconds)
        state = final_state.value if final_state else ""
        keys = [self._key(stream_id, name) for name in ("meta", "events", "producer", "cancel")]
        live = self._key(stream_id, "live")
        head: list[bytes | str | int] = [self.config.history_size, state, ttl, live]
        return [len(keys), *keys, *head, producer.producer_id, producer.seq, *payloads]

    async def append_batch(
        self,
        stream_id: str,
        payloads: Sequence[bytes],
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark,
    ) -> int:
        args = self._batch_call(Batch(stream_id, payloads, final_state, producer))
        script = self._batch_script()
        with unavailable_as_backend_error("event publish"):
            result = await script(keys=args[1:5], args=args[5:])  # type: ignore[operator]
        return check_append(stream_id, int(result))

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | StreamingError]:
        if self._sharded or len(batches) == 1:  # a cluster pipeline would split by slot
            return [await self._append_one(batch) for batch in batches]
        script: Any = self._batch_script()
        with unavailable_as_backend_error("event publish"):
            for _ in range(2):
                async with self._client.pipeline(transaction=False) as pipe:
                    for batch in batches:
                        pipe.execute_command("EVALSHA", script.sha, *self._batch_call(batch))
                    replies = await pipe.execute(raise_on_error=False)
                if not any(isinstance(reply, NoScriptError) for reply in replies):
                    break
                # A restarted server: load the script and send them all again (each batch is
                # idempotent: one that ran already returns its first seq, unchanged).
                script.sha = await self._client.script_load(script.script)
        return [
            _answer(batch.stream_id, reply) for batch, reply in zip(batches, replies, strict=True)
        ]

    async def _append_one(self, batch: Batch) -> int | StreamingError:
        try:
            return await self.append_batch(
                batch.stream_id,
                batch.payloads,
                final_state=batch.final_state,
                producer=batch.producer,
            )
        except BackendUnavailableError:
            raise
        except StreamingError as exc:
            return exc

    async def producer_progress(self, stream_id: str, producer_id: str) -> int:
        with unavailable_as_backend_error("producer progress"):
            last = await self._client.hget(self._key(stream_id, "meta"), f"p:{producer_id}")
        text = last.decode() if isinstance(last, bytes) else last
        return 0 if text is None else int(text.partition(":")[0])

    def _producer_key(self, stream_id: str) -> str:
        return self._key(stream_id, "producer")

    def _cancel_key(self, stream_id: str) -> str:
        return self._key(stream_id, "cancel")

    async def create_generated(
        self, stream_id: str, *, owner: str, ttl: float, epoch: str | None = None
    ) -> StreamMeta:
        script = getattr(self, "_create_generated", None)
        if script is None:
            script = self._create_generated = self._client.register_script(CREATE_GENERATED)
        epoch, created = epoch or new_epoch(), time.time()
        keys = [self._key(stream_id, name) for name in ("meta", "events", "producer")]
        keep = _ms(self.config.history_ttl_seconds)
        args: list[str | int] = [epoch, owner, repr(created), keep, _ms(ttl)]
        with unavailable_as_backend_error("stream create"):
            if not await script(keys=keys, args=args):
                raise StreamExistsError(stream_id)
        return StreamMeta(stream_id, epoch, StreamState.RUNNING, created, owner=owner)

    async def beat(self, stream_ids: Sequence[str], ttl: float | None) -> set[str]:
        if not stream_ids:
            return set()
        with unavailable_as_backend_error("producer heartbeat"):
            async with self._client.pipeline(transaction=False) as pipe:
                for stream_id in stream_ids:
                    if ttl is not None:
                        pipe.set(self._producer_key(stream_id), b"1", px=_ms(ttl))
                    pipe.exists(self._cancel_key(stream_id))
                replies = await pipe.execute()
        flags = replies[1::2] if ttl is not None else replies
        return {stream_id for stream_id, flag in zip(stream_ids, flags, strict=True) if flag}

    async def stop_producing(self, stream_id: str) -> None:
        with unavailable_as_backend_error("producer stop"):
            await self._client.delete(self._producer_key(stream_id), self._cancel_key(stream_id))

    async def producer_alive(self, stream_id: str) -> bool | None:
        with unavailable_as_backend_error("producer check"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hget(self._key(stream_id, "meta"), "producer")
                pipe.exists(self._producer_key(stream_id))
                generated, alive = await pipe.execute()
        return None if generated is None else bool(alive)

    async def request_cancel(self, stream_id: str) -> None:
        ttl = _ms(self.config.history_ttl_seconds)
        with unavailable_as_backend_error("stream cancel"):
            await self._client.set(self._cancel_key(stream_id), b"1", px=ttl)

    async def followers(self, stream_id: str) -> int:
        live = self._key(stream_id, "live")
        with unavailable_as_backend_error("follower count"):
            if isinstance(self._client, AsyncRedisCluster):  # ask the master of the slot
                node = self._client.get_node_from_key(live)
                counts = await self._client.execute_command(
                    "PUBSUB SHARDNUMSUB", live, target_nodes=node
                )
            else:
                counts = await self._client.pubsub_numsub(live)
        return sum(int(n) for _, n in counts)
