"""`RedisFanout`: one Pub/Sub connection (one per master on a Redis Cluster) and one supervised
reader task per process.

Every follower of every stream in the process shares the connection: a stream's channel is
subscribed while at least one local follower wants it, and each notification is copied into
the followers' bounded queues (`QueueSubscription`). Never one ``PubSub`` per client.

The reader pings the connection after ``ping_interval`` seconds of silence. When the connection
is lost it backs off, lets redis-py reconnect and resubscribe, and then queues `RESYNC` to every
follower, who read what they missed from the stream's history.

On a Redis Cluster the channels are shard channels (``SSUBSCRIBE``; the append script
``SPUBLISH``es). redis-py's cluster Pub/Sub keeps one connection per master that owns a
subscribed channel and moves a channel to its new owner after ``MOVED``, a failover or a lost
node. A master that gives a slot away drops the slot's shard channels (``sunsubscribe``); a
channel that still has followers is subscribed again, and redis-py moves it to the new owner.
Each time a shard channel is subscribed again (a reconnect, a new owner), its followers get
`RESYNC`: they fill the gap from history, shard by shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import ClusterPubSub, RedisCluster

from .._redis import UNAVAILABLE, close_pubsub
from .._tasks import detached
from ..errors import BackendUnavailableError
from .base import RESYNC, Notice, QueueSubscription
from .waits import SharedDeadlines

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from redis.asyncio.client import PubSub

    from .._redis import AsyncRedis

__all__ = ["RedisFanout"]

log = logging.getLogger("streaming_mw.channels")

_MAX_BACKOFF = 2.0
_SHARDED_POLL = 0.2
"""Longest wait of one sharded read: it holds a node's connection, so a new subscription to a
channel of that node waits for it."""


class RedisFanout:
    """Shares one Pub/Sub connection among all local followers."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        queue_size: int,
        queue_bytes: int | None = None,
        ping_interval: float,
        poll_timeout: float,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._sharded = isinstance(client, RedisCluster)
        if self._sharded:
            poll_timeout = min(poll_timeout, _SHARDED_POLL)
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._ping_interval = ping_interval
        self._poll_timeout = poll_timeout
        self._leaves = self._leave  # one bound method for every subscription, not one each
        self._subscribe_timeout = subscribe_timeout
        self._pubsub: PubSub | None = None
        self._followers: dict[bytes, set[QueueSubscription]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cleanup: set[asyncio.Task[None]] = set()
        self._watched: object | None = None
        self._deadlines = SharedDeadlines()  # one timer for every follower's wait
        self.reconnects = 0
        """How often the Pub/Sub connection was re-established."""

    @property
    def healthy(self) -> bool:
        """The reader task is running."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the reader task (once)."""
        if self._task is None:
            self._pubsub = self._client.pubsub()
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._pubsub), name="streaming_mw.fanout", context=detached()
            )

    async def aclose(self) -> None:
        """Stop the reader and close the connection; followers get nothing more."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._cleanup):
            pending.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(*UNAVAILABLE):
                await close_pubsub(self._pubsub)
            self._pubsub = None
        self._followers.clear()
        self._deadlines.cancel()

    async def subscribe(self, channel: str) -> QueueSubscription:
        """A follower of ``channel``; returns once Redis confirmed the subscription."""
        pubsub = self._pubsub
        if pubsub is None:
            raise BackendUnavailableError("channel fan-out is not running")
        key = channel.encode()
        subscription = QueueSubscription(
            self._queue_size,
            self._leaves,
            max_bytes=self._queue_bytes,
            key=key,
            deadlines=self._deadlines,
        )
        async with self._lock:
            followers = self._followers.setdefault(key, set())
            followers.add(subscription)
            confirmed = self._confirmations.get(key)
            if confirmed is None and len(followers) == 1:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmations[key] = confirmed
                try:
                    await (pubsub.ssubscribe(key) if self._sharded else pubsub.subscribe(key))
                except UNAVAILABLE as exc:
                    self._forget(key, subscription)
                    raise BackendUnavailableError(f"could not subscribe: {exc}") from exc
                self._watch(pubsub)
                self._subscribed.set()
        if confirmed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), self._subscribe_timeout)
            except TimeoutError:
                subscription.close()
                raise BackendUnavailableError("Redis did not confirm the subscription") from None
        return subscription

    def _watch(self, pubsub: PubSub) -> None:
        """Hear about every reconnect, including those redis-py's retry does silently.

        Registered once the connection exists, so every call of the callback is a reconnect.
        """
        connection: Any = getattr(pubsub, "connection", None)
        if connection is not None and connection is not self._watched:
            self._watched = connection
            connection.register_connect_callback(self._on_connect)

    async def _on_connect(self, connection: object) -> None:
        # Runs after PubSub's own callback has resubscribed every channel.
        self.reconnects += 1
        log.warning("Redis Pub/Sub reconnected; followers catch up from history")
        self._broadcast_resync()

    def _forget(self, key: bytes, subscription: QueueSubscription) -> bool:
        followers = self._followers.get(key)
        if followers is None:
            return False
        followers.discard(subscription)
        if followers:
            return False
        del self._followers[key]
        self._confirmations.pop(key, None)
        return True

    def _leave(self, subscription: QueueSubscription) -> None:
        # A bound method shared by every follower, not a closure each (about 0.2 KiB apiece).
        key = subscription.key
        if self._forget(key, subscription) and self._pubsub is not None:
            self._spawn(self._unsubscribe(key))

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    async def _resubscribe(self, key: bytes) -> None:
        """Subscribe ``key`` again after its node dropped it (a slot migration).

        The client's slot map still names the old owner, which answers ``MOVED``: redis-py's
        cluster Pub/Sub then updates the map and moves the channel to the new owner, whose
        confirmation queues `RESYNC` to the channel's followers (`_dispatch`).
        """
        async with self._lock:
            if not self._followers.get(key) or self._pubsub is None:
                return
            log.warning("Redis dropped shard channel %r (its slot moved); subscribing again", key)
            with contextlib.suppress(*UNAVAILABLE):  # the reader's recovery takes over
                await self._pubsub.ssubscribe(key)

    async def _unsubscribe(self, key: bytes) -> None:
        async with self._lock:
            if key in self._followers or self._pubsub is None:
                return  # someone subscribed again meanwhile
            with contextlib.suppress(*UNAVAILABLE):
                if self._sharded:
                    await self._pubsub.sunsubscribe(key)
                else:
                    await self._pubsub.unsubscribe(key)

    async def _run(self, pubsub: PubSub) -> None:
        backoff = 0.05
        lost = False
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            if not pubsub.subscribed:
                self._subscribed.clear()
                await self._subscribed.wait()
            try:
                message = await self._read(pubsub)
                if (
                    message is None
                    and not self._sharded  # per-node connections health-check themselves
                    and loop.time() - quiet_since >= self._ping_interval
                ):
                    await pubsub.ping()
                    quiet_since = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not only redis-py's connection errors: a reconnect racing a dying socket can
                # raise others (uvloop: RuntimeError "the handler is closed"). The reader must
                # outlive all of them, or every follower of this process waits forever.
                if not lost:
                    log.warning("Redis Pub/Sub connection lost (%r); reconnecting", exc)
                lost = True
                if not isinstance(exc, UNAVAILABLE):
                    await _drop_connection(pubsub)  # the next read reconnects from scratch
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if lost:
                lost, backoff = False, 0.05
                self._watch(pubsub)  # a new connection object gets the callback too
            if message is not None:
                quiet_since = loop.time()
                self._dispatch(message)
                if not _buffered(pubsub):
                    # The writes of what was just delivered (one loop callback) and the woken
                    # followers run before this task sets up its next read, not after it. In a
                    # burst (more already read) they wait, and go out together.
                    await asyncio.sleep(0)

    async def _read(self, pubsub: PubSub) -> dict[str, Any] | None:
        message: dict[str, Any] | None
        if isinstance(pubsub, ClusterPubSub):
            message = await pubsub.get_sharded_message(timeout=self._poll_timeout)
        else:
            message = await pubsub.get_message(timeout=self._poll_timeout)
        return message

    def _broadcast_resync(self) -> None:
        for followers in self._followers.values():
            for subscription in list(followers):
                subscription.deliver(RESYNC)

    def _dispatch(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        if kind in ("subscribe", "ssubscribe"):
            confirmed = self._confirmations.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            elif kind == "ssubscribe":  # subscribed again: after a reconnect, or on a new owner
                for subscription in list(self._followers.get(channel, ())):
                    subscription.deliver(RESYNC)
        elif kind == "sunsubscribe" and self._followers.get(channel):
            # Not ours (we leave a channel once nobody follows it): the node dropped the
            # channel because its slot moved to another master.
            self._spawn(self._resubscribe(channel))
        elif kind in ("message", "smessage"):
            data = message.get("data")
            if not isinstance(data, bytes):
                return
            epoch, _, rest = data.partition(b" ")
            seq, _, payload = rest.partition(b" ")
            item = Notice(epoch.decode(), int(seq), payload)
            for subscription in list(self._followers.get(channel, ())):
                subscription.deliver(item)


def _buffered(pubsub: PubSub) -> bool:
    """Whether the connection's parser holds bytes of the next message already (hiredis's
    reader); False when that cannot be told (another parser, a cluster's node connections)."""
    parser = getattr(getattr(pubsub, "connection", None), "_parser", None)
    has_data = getattr(getattr(parser, "_reader", None), "has_data", None)
    return bool(has_data()) if callable(has_data) else False


async def _drop_connection(pubsub: PubSub) -> None:
    connection: Any = getattr(pubsub, "connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.disconnect()
