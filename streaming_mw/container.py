"""The dependency-injection container: which backend serves each concern, decided at startup.

`StreamingContainer` is a `dependency-injector` ``DeclarativeContainer`` used without wiring.
`start_container` (run by `StreamingMiddleware` at lifespan startup) reads the options and the
environment, probes Redis, and selects the Redis or memory implementations; without Redis it
logs one ``STREAMING FALLBACK`` warning and everything keeps working in one process. Tests
swap pieces with ``container.<provider>.override(...)``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from dependency_injector import containers, providers
from redis.exceptions import RedisError

from ._redis import make_client
from ._tasks import TaskSet
from .config import (
    ChannelConfig,
    QueueRedisConfig,
    StreamingMode,
    StreamLeaseConfig,
    load_settings,
)
from .errors import BackendUnavailableError, ConfigurationError
from .keeper import LeaseKeeper
from .leases import FailoverLeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from .registry import StreamRegistry

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .leases import RedisFailurePolicy

__all__ = [
    "Runtime",
    "StreamingContainer",
    "StreamingOptions",
    "ensure_started",
    "get_container",
    "init_lease_limiter",
    "init_streaming",
    "start_container",
    "stop_container",
]

log = logging.getLogger("streaming_mw")

_SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    """What `init_streaming` set; ``None`` means "read the environment at startup"."""

    redis: QueueRedisConfig | None = None
    lease: StreamLeaseConfig = field(default_factory=StreamLeaseConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    enable_storage: bool = False
    lease_policy: RedisFailurePolicy = "fallback"
    mode: StreamingMode | None = None


class Runtime:
    """Mutable state of one container: whether it runs, on what, and its background tasks."""

    def __init__(self) -> None:
        self.users = 0
        self.backend: Literal["redis", "memory"] | None = None
        self.redis: Redis | None = None
        self.pending_options = False
        self.fallback_reason: str | None = None
        self.lock = asyncio.Lock()
        self.tasks = TaskSet()

    @property
    def started(self) -> bool:
        return self.backend is not None


class StreamingContainer(containers.DeclarativeContainer):
    """Providers of every piece streaming_mw uses; ``mode`` selects Redis or memory."""

    options = providers.Object(StreamingOptions())
    runtime = providers.Singleton(Runtime)
    mode = providers.Object("memory")
    redis_client: providers.Object[Redis | None] = providers.Object(None)
    redis_config: providers.Object[QueueRedisConfig | None] = providers.Object(None)

    memory_lease_limiter = providers.Singleton(MemoryLeaseLimiter, options.provided.lease)
    redis_lease_limiter = providers.Singleton(
        RedisLeaseLimiter,
        redis_client,
        options.provided.lease,
        operation_timeout=redis_config.provided.socket_timeout,
    )
    failover_lease_limiter = providers.Singleton(
        FailoverLeaseLimiter,
        redis_lease_limiter,
        memory_lease_limiter,
        policy=options.provided.lease_policy,
    )
    lease_limiter = providers.Selector(
        mode, memory=memory_lease_limiter, redis=failover_lease_limiter
    )
    lease_keeper = providers.Singleton(LeaseKeeper)
    stream_registry = providers.Singleton(StreamRegistry)


_default: StreamingContainer | None = None


def get_container() -> StreamingContainer:
    """The process's default container (created on first use)."""
    global _default
    if _default is None:
        _default = StreamingContainer()
    return _default


def _configure(container: StreamingContainer, options: StreamingOptions) -> None:
    container.options.set_provides(options)
    runtime: Runtime = container.runtime()
    if runtime.started:
        runtime.pending_options = True  # applied after the app's startup, or on next use


def init_streaming(
    redis_config: QueueRedisConfig | str | None = None,
    *,
    enable_storage: bool = False,
    lease_config: StreamLeaseConfig | None = None,
    channel_config: ChannelConfig | None = None,
    mode: StreamingMode | None = None,
    container: StreamingContainer | None = None,
) -> None:
    """Configure streaming (seed: ``init_streaming``); overrides what the environment says.

    Call it at import time or inside the app's startup. With ``redis_config`` the container
    uses that Redis (falling back to memory if it cannot be reached); without it,
    ``REDIS_URL`` decides. ``lease_config``/``channel_config`` left out keep their current
    value; ``mode`` left out lets ``STREAMING_MODE`` decide.
    """
    container = container or get_container()
    current: StreamingOptions = container.options()
    options = replace(
        current,
        redis=_as_redis_config(redis_config),
        enable_storage=enable_storage,
        lease=lease_config or current.lease,
        channel=channel_config or current.channel,
        mode=mode,
    )
    _configure(container, options)


def init_lease_limiter(
    redis_config: QueueRedisConfig | str | None,
    config: StreamLeaseConfig | None = None,
    *,
    policy: RedisFailurePolicy = "fallback",
    container: StreamingContainer | None = None,
) -> None:
    """Configure the lease limiter only (seed: ``init_lease_limiter``)."""
    container = container or get_container()
    current: StreamingOptions = container.options()
    options = replace(
        current,
        redis=_as_redis_config(redis_config) or current.redis,
        lease=config or current.lease,
        lease_policy=policy,
    )
    _configure(container, options)


def _as_redis_config(value: QueueRedisConfig | str | None) -> QueueRedisConfig | None:
    return QueueRedisConfig(value) if isinstance(value, str) else value


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _fallback_warning(runtime: Runtime, reason: str) -> None:
    if runtime.fallback_reason == reason:
        return  # a restart (options applied after startup) that falls back alike stays quiet
    runtime.fallback_reason = reason
    log.warning(
        "STREAMING FALLBACK: Redis not available (%s). Using in-memory leases and channels: "
        "limits apply per process, queued streams run inside this process, and streams do "
        "not survive a restart.",
        reason,
    )


async def _start_backends(container: StreamingContainer, runtime: Runtime) -> None:
    options: StreamingOptions = container.options()
    settings = load_settings()
    mode = options.mode or settings.streaming_mode
    redis_config = options.redis
    if redis_config is None and settings.redis_url is not None:
        redis_config = QueueRedisConfig(settings.redis_url)
    runtime.backend = "memory"
    if mode == "memory":
        log.info("streaming_mw: in-memory backends (mode=memory)")
    elif redis_config is None:
        if mode == "redis":
            raise ConfigurationError("STREAMING_MODE=redis needs REDIS_URL or init_streaming()")
        _fallback_warning(runtime, "REDIS_URL is not set")
    else:
        client = make_client(redis_config)
        try:
            await asyncio.wait_for(client.ping(), redis_config.connect_timeout + 1)
        except (RedisError, OSError) as exc:
            await client.aclose()
            where = _redacted(redis_config.url)
            reason = f"{where} did not answer: {type(exc).__name__}: {exc}".rstrip(": ")
            if mode == "redis":
                raise BackendUnavailableError(f"Redis at {reason}") from exc
            _fallback_warning(runtime, reason)
        else:
            runtime.backend, runtime.redis = "redis", client
            container.redis_client.set_provides(client)
            container.redis_config.set_provides(redis_config)
            log.info("streaming_mw: Redis backends at %s", _redacted(redis_config.url))
    container.mode.set_provides(runtime.backend)
    runtime.pending_options = False


async def _stop_backends(container: StreamingContainer, runtime: Runtime) -> None:
    client, runtime.redis = runtime.redis, None
    container.mode.set_provides("memory")
    container.redis_client.set_provides(None)
    container.redis_config.set_provides(None)
    options: StreamingOptions = container.options()
    memory: MemoryLeaseLimiter = container.memory_lease_limiter()
    if memory.config != options.lease:  # keep the slots held in this process when possible
        container.memory_lease_limiter.reset()
    container.redis_lease_limiter.reset()
    container.failover_lease_limiter.reset()
    if client is not None:
        await client.aclose()


async def start_container(container: StreamingContainer | None = None) -> None:
    """Start the container (counted: every start needs its `stop_container`)."""
    container = container or get_container()
    runtime: Runtime = container.runtime()
    async with runtime.lock:
        runtime.users += 1
        if runtime.users == 1:
            try:
                await _start_backends(container, runtime)
            except BaseException:
                runtime.users -= 1
                runtime.backend = None
                raise
            keeper: LeaseKeeper = container.lease_keeper()
            keeper.start()
        elif runtime.pending_options:
            await _restart(container, runtime)


async def apply_pending_options(container: StreamingContainer | None = None) -> None:
    """Apply what `init_streaming` changed after the container had started."""
    container = container or get_container()
    runtime: Runtime = container.runtime()
    if runtime.started and runtime.pending_options:
        async with runtime.lock:
            if runtime.pending_options:
                await _restart(container, runtime)


async def _restart(container: StreamingContainer, runtime: Runtime) -> None:
    await _stop_backends(container, runtime)
    await _start_backends(container, runtime)


async def ensure_started(container: StreamingContainer | None = None) -> None:
    """Start the container on first use when no lifespan did (e.g. lifespan turned off)."""
    container = container or get_container()
    runtime: Runtime = container.runtime()
    if not runtime.started:
        log.info("streaming_mw: starting on first use; add StreamingMiddleware for clean shutdown")
        await start_container(container)
    elif runtime.pending_options:
        await apply_pending_options(container)


async def stop_container(container: StreamingContainer | None = None) -> None:
    """Stop the container when its last user stops: release every lease still held, stop
    background work, close connections. Idempotent."""
    container = container or get_container()
    runtime: Runtime = container.runtime()
    async with runtime.lock:
        if not runtime.started:
            return
        runtime.users = max(0, runtime.users - 1)
        if runtime.users:
            return
        keeper: LeaseKeeper = container.lease_keeper()
        await keeper.stop()
        held = keeper.held
        if held:
            log.info("streaming_mw: releasing %d lease(s) still held at shutdown", len(held))
        await asyncio.gather(
            *(asyncio.wait_for(lease.release(), _SHUTDOWN_TIMEOUT) for lease in held),
            return_exceptions=True,
        )
        try:
            await asyncio.wait_for(runtime.tasks.join(), _SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.warning("streaming_mw: background tasks still running at shutdown")
        await _stop_backends(container, runtime)
        runtime.backend = None
    container.reset_singletons()
