"""Redis channel backend (DESIGN §3): a Redis Stream of events plus a meta hash per stream.

Keys share the stream's hash tag, so every script touches one slot:

* ``<prefix>{<id>}:meta`` — hash: ``epoch``, ``owner``, ``state``, ``created``, ``seq``;
* ``<prefix>{<id>}:events`` — Redis Stream, entry id ``<seq>-0``, field ``e`` = payload;
* ``<prefix>{<id>}:live`` — Pub/Sub channel, message ``<epoch> <seq> <payload>``.

One Lua script bumps ``seq``, ``XADD``s with ``MAXLEN`` = ``history_size`` (exact, so the
retained history is what the config promises), refreshes the expiry and publishes, atomically.
On a Redis Cluster it publishes with ``SPUBLISH`` (`APPEND_SHARDED`): the live channel shares
the stream's hash tag, so only the master owning that slot carries the message.
Both keys expire ``history_ttl_seconds`` after the last event. `SyncRedisChannel` runs the same
scripts with a plain synchronous client, for worker processes; the web process's worker threads
use one too (`RedisChannelBackend.publish_from_threads`), so their events need no hop through
the event loop.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from .._redis import unavailable_as_backend_error
from ..config import ChannelConfig
from ..errors import StreamNotFoundError
from ..events import as_stream_event, new_epoch
from .base import ProducerMark, StreamMeta, StreamState
from .fanout import RedisFanout
from .packed import PackedAppender
from .producing import RedisProducing, check_append
from .stream import final_state_of

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

    from .._redis import AsyncRedis
    from ..events import ServerSentEventLike, StreamEvent
    from .base import QueueSubscription

__all__ = [
    "APPEND",
    "APPEND_SHARDED",
    "CREATE",
    "RedisChannelBackend",
    "StreamKeys",
    "SyncRedisChannel",
]

# KEYS: meta ; ARGV: epoch, owner, created, ttl ms, job id -> the meta hash as a flat list
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'owner', ARGV[2], 'state', 'running',
             'created', ARGV[3], 'seq', 0, 'job', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: meta, events ; ARGV: payload, maxlen, final state or '', ttl ms, live channel,
# producer id or '', producer seq -> seq, or -1 (no such stream), -2 (stream already ended),
# -3 (producer out of order). Publishes "<epoch> <seq> <payload>". A repeat of a producer's last
# append (a retry of a command that already ran) returns that append's seq and changes nothing.
APPEND = """
local head = redis.call('HMGET', KEYS[1], 'state', 'epoch')
local state = head[1]
if not state then return -1 end
local pkey = 'p:' .. ARGV[6]
if ARGV[6] ~= '' then
  local last = redis.call('HGET', KEYS[1], pkey)
  if last then
    local sep = string.find(last, ':', 1, true)
    local last_pseq = tonumber(string.sub(last, 1, sep - 1))
    local pseq = tonumber(ARGV[7])
    if pseq == last_pseq then return tonumber(string.sub(last, sep + 1)) end
    if pseq < last_pseq then return -3 end
  end
end
if state ~= 'running' then return -2 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], pkey, ARGV[7] .. ':' .. seq) end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'e', ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], head[2] .. ' ' .. seq .. ' ' .. ARGV[1])
return seq
"""

APPEND_SHARDED = APPEND.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
"""`APPEND` for a Redis Cluster: the notification goes out with ``SPUBLISH``."""


class StreamKeys:
    """The key names of one stream."""

    __slots__ = ("events", "live", "meta")

    def __init__(self, prefix: str, stream_id: str) -> None:
        tag = f"{prefix}{{{stream_id}}}"
        self.meta = f"{tag}:meta"
        self.events = f"{tag}:events"
        self.live = f"{tag}:live"


def _meta_from(stream_id: str, flat: Sequence[bytes], first_seq: int) -> StreamMeta:
    fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    return StreamMeta(
        stream_id=stream_id,
        epoch=fields["epoch"],
        state=StreamState(fields["state"]),
        created_at=float(fields["created"]),
        last_seq=int(fields["seq"]),
        first_seq=first_seq,
        owner=fields.get("owner") or None,
        job_id=fields.get("job") or None,
    )


def _seq_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _entries(raw: Any) -> list[tuple[int, bytes]]:
    """``XRANGE`` entries as ``(seq, payload)``."""
    return [(_seq_of(entry_id), fields[b"e"]) for entry_id, fields in raw or ()]


def _first(raw: Any) -> int:
    """The ``seq`` of an ``XRANGE … COUNT 1`` answer, 0 for an empty stream."""
    return _seq_of(raw[0][0]) if raw else 0


Arg: TypeAlias = bytes | str | int


class _Scripts:
    """Key names and script arguments shared by the async and the sync channel."""

    config: ChannelConfig

    def keys(self, stream_id: str) -> StreamKeys:
        return StreamKeys(self.config.key_prefix, stream_id)

    def _ttl_ms(self) -> int:
        return max(1, round(self.config.history_ttl_seconds * 1000))

    def _create_args(self, owner: str | None, job_id: str | None) -> list[Arg]:
        return [new_epoch(), owner or "", repr(time.time()), self._ttl_ms(), job_id or ""]

    def _append_args(
        self,
        keys: StreamKeys,
        payload: bytes,
        final_state: StreamState | None,
        producer: ProducerMark | None,
    ) -> list[Arg]:
        state = final_state.value if final_state else ""
        pid, pseq = (producer.producer_id, producer.seq) if producer else ("", 0)
        return [payload, self.config.history_size, state, self._ttl_ms(), keys.live, pid, pseq]


class RedisChannelBackend(_Scripts, RedisProducing):
    """Streams shared by every process on one Redis; followers fed by one `RedisFanout`.
    Also a `ProducingBackend` (resumable direct streams)."""

    def __init__(self, client: AsyncRedis, config: ChannelConfig | None = None) -> None:
        self.config = config or ChannelConfig()
        self._client = client
        self._create = client.register_script(CREATE)
        sharded = self._sharded = isinstance(client, AsyncRedisCluster)
        self._append = client.register_script(APPEND_SHARDED if sharded else APPEND)
        self.fanout = RedisFanout(
            client,
            queue_size=self.config.subscriber_queue_size,
            queue_bytes=self.config.subscriber_queue_bytes,
            ping_interval=self.config.ping_interval,
            poll_timeout=self.config.subscribe_timeout,
        )
        self._thread_lock = threading.Lock()
        self._thread_client: Callable[[], redis.Redis | redis.RedisCluster] | None = None
        self._thread_channel: SyncRedisChannel | None = None

    def publish_from_threads(
        self, client: Callable[[], redis.Redis | redis.RedisCluster] | None
    ) -> None:
        """Let worker threads append with a synchronous client made by ``client`` (on the first
        such append), instead of handing each event to the event loop (`ThreadAppending`).
        None turns it off."""
        with self._thread_lock:
            self._thread_client, self._thread_channel = client, None

    def append_from_thread(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int | None:
        """`append` in the calling thread (blocking), or None if threads may not publish."""
        channel = self._thread_channel
        if channel is None:
            with self._thread_lock:
                if self._thread_client is None:
                    return None
                if self._thread_channel is None:
                    self._thread_channel = SyncRedisChannel(self._thread_client(), self.config)
                channel = self._thread_channel
        return channel.append(stream_id, payload, final_state=final_state, producer=producer)

    async def start(self) -> None:
        await self.fanout.start()

    async def create(
        self, stream_id: str, *, owner: str | None = None, job_id: str | None = None
    ) -> StreamMeta:
        keys = self.keys(stream_id)
        args = self._create_args(owner, job_id)
        with unavailable_as_backend_error("stream create"):
            flat = await self._create(keys=[keys.meta], args=args)
            first = await self._first_seq(keys)
        return _meta_from(stream_id, flat, first)

    async def _first_seq(self, keys: StreamKeys) -> int:
        return _first(await self._client.xrange(keys.events, count=1))

    async def meta(self, stream_id: str) -> StreamMeta | None:
        keys = self.keys(stream_id)
        with unavailable_as_backend_error("stream meta"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.meta)
                pipe.xrange(keys.events, count=1)
                fields, head = await pipe.execute()
        if not fields:
            return None
        flat = [item for pair in fields.items() for item in pair]
        return _meta_from(stream_id, flat, _first(head))

    async def append(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        keys = self.keys(stream_id)
        args = self._append_args(keys, payload, final_state, producer)
        with unavailable_as_backend_error("event publish"):
            result = await self._append(keys=[keys.meta, keys.events], args=args)
        return check_append(stream_id, int(result))

    async def read(self, stream_id: str, after_seq: int, limit: int) -> Sequence[tuple[int, bytes]]:
        with unavailable_as_backend_error("history read"):
            entries = await self._client.xrange(
                self.keys(stream_id).events, min=f"({after_seq}-0", count=limit
            )
        return _entries(entries)

    async def subscribe(self, stream_id: str) -> QueueSubscription:
        keys = self.keys(stream_id)
        with unavailable_as_backend_error("stream lookup"):
            exists = await self._client.exists(keys.meta)
        if not exists:
            raise StreamNotFoundError(stream_id)
        return await self.fanout.subscribe(keys.live)

    async def aclose(self) -> None:
        await self.fanout.aclose()
        with self._thread_lock:
            thread_channel, self._thread_channel = self._thread_channel, None
        if thread_channel is not None:
            thread_channel.close()


class SyncRedisChannel(_Scripts):
    """Create streams and publish events from any process with a synchronous Redis client."""

    def __init__(
        self, client: redis.Redis | redis.RedisCluster, config: ChannelConfig | None = None
    ) -> None:
        self.config = config or ChannelConfig()
        self._client = client
        self._create = client.register_script(CREATE)
        sharded = isinstance(client, RedisCluster)
        self._append = client.register_script(APPEND_SHARDED if sharded else APPEND)
        self._packed: PackedAppender | None = None
        if isinstance(client, SyncRedis) and PackedAppender.usable(client):
            limit = getattr(client.connection_pool, "max_connections", 16) // 2
            self._packed = PackedAppender(client, APPEND, self._append.sha, limit=min(limit, 32))

    def close(self) -> None:
        """Close the client's connections."""
        if self._packed is not None:
            self._packed.close()
        self._client.close()

    def create(
        self, stream_id: str, *, owner: str | None = None, job_id: str | None = None
    ) -> StreamMeta:
        keys = self.keys(stream_id)
        with unavailable_as_backend_error("stream create"):
            flat = self._create(keys=[keys.meta], args=self._create_args(owner, job_id))
            head = self._client.xrange(keys.events, count=1)
        return _meta_from(stream_id, flat, _first(head))

    def append(
        self,
        stream_id: str,
        payload: bytes,
        *,
        final_state: StreamState | None = None,
        producer: ProducerMark | None = None,
    ) -> int:
        keys = self.keys(stream_id)
        args = self._append_args(keys, payload, final_state, producer)
        with unavailable_as_backend_error("event publish"):
            result = None
            if producer is not None and self._packed is not None:  # a repeat is safe
                result = self._packed.run((keys.meta, keys.events), args)
            if result is None:
                result = self._append(keys=[keys.meta, keys.events], args=args)
        return check_append(stream_id, int(result))  # type: ignore[call-overload]

    def publish(
        self,
        stream_id: str,
        event: StreamEvent | ServerSentEventLike,
        *,
        producer: ProducerMark | None = None,
    ) -> int:
        """Append ``event`` (checked against ``max_event_bytes``; ``complete``/``error`` end the
        stream) and return its ``seq``. Pass a `ProducerMark` to make a retry safe. FastAPI's
        ``ServerSentEvent`` is converted by `as_stream_event`."""
        event = as_stream_event(event)
        payload = event.to_bytes(max_bytes=self.config.max_event_bytes)
        return self.append(stream_id, payload, final_state=final_state_of(event), producer=producer)
