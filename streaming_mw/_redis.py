"""Helpers shared by the Redis backends: one place that maps connectivity failures to
`BackendUnavailableError`, and the client factory the container uses."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from redis import exceptions as redis_exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from redis.asyncio.client import PubSub

    from .config import QueueRedisConfig

__all__ = [
    "CLIENT_NAME",
    "UNAVAILABLE",
    "close_pubsub",
    "make_client",
    "unavailable_as_backend_error",
]

CLIENT_NAME = "streaming_mw"
"""The name every connection gives itself (``CLIENT SETNAME``): ``CLIENT LIST`` shows ours."""

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.ClusterDownError,
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


async def close_pubsub(pubsub: PubSub) -> None:
    """Close a Pub/Sub object and its connection.

    ``PubSub.aclose`` carries no annotations before redis-py 8.2; binding it to a typed callable
    keeps the call checked by mypy on every redis-py release the pins allow, without an ignore.
    """
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    await aclose()
