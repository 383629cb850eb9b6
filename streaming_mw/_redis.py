"""Helpers shared by the Redis backends: one place that maps connectivity failures to
`BackendUnavailableError`, the client factory the container uses, and the Redis Cluster probe.

Cluster mode is detected, not configured: `is_cluster` asks the node (``INFO cluster``) and
`make_client` builds a `redis.asyncio.cluster.RedisCluster` instead of a `Redis` for it.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis import exceptions as redis_exceptions
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as SyncRetry

from .errors import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from redis.asyncio.client import PubSub

    from .config import QueueRedisConfig

__all__ = [
    "CLIENT_NAME",
    "CLUSTER_MIN_CONNECTIONS",
    "UNAVAILABLE",
    "AsyncRedis",
    "TurnTakingCluster",
    "close_pubsub",
    "is_cluster",
    "make_client",
    "make_cluster_client",
    "make_sync_client",
    "redis_db",
    "unavailable_as_backend_error",
]

AsyncRedis: TypeAlias = Redis | RedisCluster
"""The client a Redis backend receives: one node, or a Redis Cluster."""

CLUSTER_MIN_CONNECTIONS = 64
"""The per-node cap of redis-py's cluster pool at least. That pool does not wait: a command
that finds every connection to its node busy fails at once. `TurnTakingCluster` makes commands
wait for a turn instead, well below this cap, so the cap is only a backstop."""

CLIENT_NAME = "streaming_mw"
"""The name every connection gives itself (``CLIENT SETNAME``): ``CLIENT LIST`` shows ours."""

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.ClusterDownError,
    redis_exceptions.TryAgainError,
    # "TTL exhausted": redirected or told to TRYAGAIN (a slot half migrated) too many times
    redis_exceptions.ClusterError,
    redis_exceptions.SlotNotCoveredError,
    # redis-py >= 8.2 (older releases raise a ConnectionError, already above)
    getattr(redis_exceptions, "RedisClusterUnreachableError", redis_exceptions.ConnectionError),
    ConnectionError,
    TimeoutError,
)
"""Errors meaning "Redis cannot be reached right now", as opposed to a bad command."""


@contextmanager
def unavailable_as_backend_error(what: str) -> Iterator[None]:
    """Re-raise connectivity failures inside the block as `BackendUnavailableError`."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise BackendUnavailableError(f"Redis unavailable during {what}: {exc}") from exc


def redis_db(url: str) -> int:
    """The database number a Redis URL names (``/N`` or ``?db=N``), 0 when it names none."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "db" in query:
        return int(query["db"])
    path = parts.path.strip("/") if parts.scheme != "unix" else ""
    return int(path) if path.isdigit() else 0


def _on_db0(url: str) -> str:
    if redis_db(url) == 0:
        return url
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "db"])
    path = "" if parts.scheme != "unix" else parts.path
    return urlunsplit(parts._replace(path=path, query=query))


async def is_cluster(config: QueueRedisConfig) -> bool:
    """Ask the node at ``config.url`` whether it runs in cluster mode (``INFO cluster``).

    One connection on database 0 (a cluster refuses ``SELECT``), closed before returning; a
    node that cannot be reached raises what redis-py raises, within ``connect_timeout + 1``.
    """
    pool = ConnectionPool.from_url(
        _on_db0(config.url),
        max_connections=1,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        client_name=CLIENT_NAME,
    )
    client = Redis.from_pool(pool)
    try:
        info = await asyncio.wait_for(client.info("cluster"), config.connect_timeout + 1)
    except redis_exceptions.ResponseError:
        return False  # INFO refused (an ACL, a proxy): a single node as far as we can tell
    finally:
        await client.aclose()
    return str(info.get("cluster_enabled", 0)) == "1"


def make_client(config: QueueRedisConfig) -> Redis:
    """An asyncio Redis client with bounded waits: nothing hangs when Redis is gone.

    At most ``config.max_connections`` connections (a blocking pool: a busy burst waits for a
    free connection rather than opening more). One quick retry with a short backoff rides over
    a dropped connection. A refused connection
    fails at once; a server that accepts but never answers is bounded by the socket timeouts
    (callers on a hot path add an overall deadline of their own).
    """
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        timeout=config.socket_timeout,  # waiting for a free connection, not opening one more
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        retry_on_error=[redis_exceptions.ConnectionError, redis_exceptions.TimeoutError],
        health_check_interval=30,
        client_name=CLIENT_NAME,
    )
    return Redis.from_pool(pool)


_HOLDS_TURN: ContextVar[bool] = ContextVar("streaming_mw_cluster_turn", default=False)


class TurnTakingCluster(RedisCluster):
    """A `RedisCluster` whose commands take turns, as a single node's blocking pool makes them.

    At most ``max_in_flight`` commands (a pipeline counts as one) run at once; the others wait
    for a turn, up to ``turn_timeout`` seconds, then fail as a connection error. redis-py opens a
    node's connections only as concurrent commands need them, so a burst of followers no longer
    opens dozens per node: each node holds at most ``max_in_flight`` command connections, plus
    the sharded subscriber's. A command issued while its task holds a turn (a pipeline's
    redirected command) runs within that turn.
    """

    def __init__(
        self, *args: Any, max_in_flight: int = 2, turn_timeout: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(max_in_flight)
        self._turn_timeout = turn_timeout

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the client's turns (re-entrant within a task)."""
        if _HOLDS_TURN.get():
            yield
            return
        try:
            async with asyncio.timeout(self._turn_timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise redis_exceptions.ConnectionError("no free Redis Cluster connection") from None
        token = _HOLDS_TURN.set(True)
        try:
            yield
        finally:
            _HOLDS_TURN.reset(token)
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        return _TurnTakingPipeline(super().pipeline(transaction, shard_hint), self)


class _TurnTakingPipeline:
    """A cluster pipeline that runs in one turn of its `TurnTakingCluster` (the rest of the
    pipeline's interface is the wrapped one's)."""

    def __init__(self, pipe: ClusterPipeline, client: TurnTakingCluster) -> None:
        self._pipe = pipe
        self._turn_of = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    async def __aenter__(self) -> _TurnTakingPipeline:
        await self._pipe.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pipe.__aexit__(None, None, None)  # it only resets the pipeline

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with self._turn_of.turn():
            return await self._pipe.execute(raise_on_error, allow_redirections)


def make_cluster_client(config: QueueRedisConfig) -> RedisCluster:
    """A `RedisCluster` client that discovers every node from the one in ``config.url``.

    At most ``max_connections - 1`` commands at once (`TurnTakingCluster`: the others wait up
    to ``socket_timeout``), so each node holds at most that many command connections plus one
    sharded subscriber; the per-node cap of redis-py's pool is set higher
    (``CLUSTER_MIN_CONNECTIONS``) only so that it is never what refuses a command. The same
    socket timeouts as a single node, and redis-py's cluster retries (MOVED/ASK follow the
    slot, a connection error refreshes the slot map) bounded by a short backoff.
    """
    db = redis_db(config.url)
    if db != 0:
        raise ConfigurationError(
            f"Redis Cluster has only database 0; the URL names database {db}: drop the /{db}"
        )
    return TurnTakingCluster.from_url(
        config.url,
        max_in_flight=config.max_connections - 1,  # as on one node: the rest for Pub/Sub
        turn_timeout=config.socket_timeout,
        max_connections=max(config.max_connections, CLUSTER_MIN_CONNECTIONS),
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        health_check_interval=30,
        client_name=CLIENT_NAME,
    )


async def close_pubsub(pubsub: PubSub) -> None:
    """Close a Pub/Sub object and its connection.

    ``PubSub.aclose`` carries no annotations before redis-py 8.2; binding it to a typed callable
    keeps the call checked by mypy on every redis-py release the pins allow, without an ignore.
    """
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    await aclose()


def make_sync_client(config: QueueRedisConfig, cluster: bool) -> redis.Redis | redis.RedisCluster:
    """The synchronous twin of `make_client` / `make_cluster_client`, for worker threads that
    publish without going through the event loop. Same limits: a blocking pool of at most
    ``config.max_connections`` connections (per node on a cluster), opened only when a thread
    publishes, and the same timeouts."""
    if cluster:
        return redis.RedisCluster.from_url(
            config.url,
            max_connections=max(config.max_connections, CLUSTER_MIN_CONNECTIONS),
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.socket_timeout,
            retry=SyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            client_name=CLIENT_NAME,
        )
    pool = redis.BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        retry=SyncRetry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        retry_on_error=[redis_exceptions.ConnectionError, redis_exceptions.TimeoutError],
        health_check_interval=30,
        client_name=CLIENT_NAME,
    )
    return redis.Redis.from_pool(pool)
