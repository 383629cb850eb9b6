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
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol

from dependency_injector import containers, providers

from .._tasks import TaskSet
from ..channels import AsyncStreamChannel, MemoryChannelBackend
from ..channels.redis import RedisChannelBackend
from ..config import (
    ChannelConfig,
    QueueRedisConfig,
    StorageConfig,
    StreamingMode,
    StreamLeaseConfig,
)
from ..errors import ConfigurationError
from ..jobs.memory import MemoryJobQueue
from ..jobs.model import QueueConfig
from ..jobs.redis import RedisJobQueue
from ..leases import FailoverLeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from ..telemetry import Telemetry, UserIdPolicy
from .drain import Drain
from .heartbeat import LiveStreamHeartbeat
from .keeper import LeaseKeeper
from .lease_events import LeaseEvent, LeaseEvents
from .registry import StreamRegistry
from .runner import WorkerRunner
from .waiting import LeaseWaiters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .._redis import AsyncRedis
    from ..leases import RedisFailurePolicy
    from ..leases.fingerprint import LeaseConfigBeacon
    from ..storage.base import EventStorage
    from ..storage.writer import StorageWriter
    from .drain import SignalHook
    from .listeners import ListenerWatch

__all__ = [
    "LocalProducer",
    "Runtime",
    "StreamingContainer",
    "StreamingOptions",
    "current_container",
    "get_container",
    "init_channels",
    "init_event_storage",
    "init_lease_limiter",
    "init_streaming",
    "init_telemetry",
    "request_container",
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
    storage: StorageConfig | None = None
    lease_policy: RedisFailurePolicy = "fallback"
    mode: StreamingMode | None = None
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    telemetry_user_ids: UserIdPolicy = "raw"
    lease_events: Callable[[LeaseEvent], object] | None = None


class LocalProducer(Protocol):
    """A resumable stream generated in this process (see ``web/generation.py``)."""

    def stop(self, reason: str) -> None:
        """Close its generator and end the stream (``cancelled``, ``abandoned``)."""
        ...


class Runtime:
    """Mutable state of one container: whether it runs, on what, and its background tasks."""

    def __init__(self) -> None:
        self.users = 0
        self.backend: Literal["redis", "memory"] | None = None
        self.redis: AsyncRedis | None = None
        self.redis_channels: RedisChannelBackend | None = None
        self.lease_beacon: LeaseConfigBeacon | None = None
        self.local_worker: object | None = None
        self.closers: list[Callable[[], Awaitable[None]]] = []
        """Run first at stop, newest first (e.g. the in-process job worker)."""
        self.pending_options = False
        self.fallback_reason: str | None = None
        self.lock = asyncio.Lock()
        self.tasks = TaskSet()
        self.drain = Drain()
        """Shutdown drain: started by a signal, `start_drain` or the lifespan shutdown."""
        self.signal_hook: SignalHook | None = None
        self.listener_watch: ListenerWatch | None = None
        """Starts the drain when the server closes its listening socket (`ListenerWatch`)."""
        self.producers: dict[str, LocalProducer] = {}
        """Resumable streams whose generator runs in this process, by stream id."""
        self.producer_watch: asyncio.Task[None] | None = None
        """The one loop that keeps their heartbeats and looks at their cancel flags."""

    @property
    def started(self) -> bool:
        return self.backend is not None


class StreamingContainer(containers.DeclarativeContainer):
    """Providers of every piece streaming_mw uses; ``mode`` selects Redis or memory."""

    options = providers.Object(StreamingOptions())
    runtime = providers.Singleton(Runtime)
    mode = providers.Object("memory")
    redis_client: providers.Object[AsyncRedis | None] = providers.Object(None)
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
    memory_channel_backend = providers.Singleton(MemoryChannelBackend, options.provided.channel)
    redis_channel_backend = providers.Singleton(
        RedisChannelBackend, redis_client, options.provided.channel
    )
    channel_backend = providers.Selector(
        mode, memory=memory_channel_backend, redis=redis_channel_backend
    )
    stream_channel = providers.Singleton(
        AsyncStreamChannel, channel_backend, options.provided.channel
    )
    worker_runner = providers.Singleton(
        WorkerRunner,
        options.provided.channel.provided.worker_threads,
        options.provided.channel.provided.expose_errors,
    )
    queue_config = providers.Object(QueueConfig())
    memory_job_queue = providers.Singleton(MemoryJobQueue, queue_config)
    redis_job_queue = providers.Singleton(RedisJobQueue, redis_client, queue_config)
    job_queue = providers.Selector(mode, memory=memory_job_queue, redis=redis_job_queue)
    telemetry = providers.Singleton(
        Telemetry,
        options.provided.tracer_provider,
        options.provided.meter_provider,
        options.provided.telemetry_user_ids,
    )
    event_storage: providers.Object[EventStorage | None] = providers.Object(None)
    storage_writer: providers.Object[StorageWriter | None] = providers.Object(None)
    lease_events = providers.Singleton(
        LeaseEvents, telemetry.provider, options.provided.lease_events
    )
    lease_keeper = providers.Singleton(LeaseKeeper, lease_events.provider)
    lease_waiters = providers.Singleton(LeaseWaiters)
    stream_registry = providers.Singleton(StreamRegistry)
    stream_heartbeat = providers.Singleton(
        LiveStreamHeartbeat, runtime, stream_registry, options.provided.channel
    )


_default: StreamingContainer | None = None

request_container: ContextVar[StreamingContainer | None] = ContextVar(
    "streaming_mw.request_container", default=None
)
"""The container of the request being handled (the middleware sets it), if any."""


def get_container() -> StreamingContainer:
    """The process's default container (created on first use)."""
    global _default
    if _default is None:
        _default = StreamingContainer()
    return _default


def current_container() -> StreamingContainer:
    """The container of the request being handled, else the process default."""
    container = request_container.get()
    return container if container is not None else get_container()


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
    on_event: Callable[[LeaseEvent], object] | None = None,
    container: StreamingContainer | None = None,
) -> None:
    """Configure the lease limiter only (seed: ``init_lease_limiter``).

    ``on_event`` is called with a `LeaseEvent` for each lease acquired, rejected, lost,
    released, or refused by an unreachable backend (None keeps the current callback)."""
    container = container or get_container()
    current: StreamingOptions = container.options()
    options = replace(
        current,
        redis=_as_redis_config(redis_config) or current.redis,
        lease=config or current.lease,
        lease_policy=policy,
        lease_events=on_event or current.lease_events,
    )
    _configure(container, options)
    container.lease_events.reset()


def init_channels(
    redis_config: QueueRedisConfig | str | None,
    config: ChannelConfig | None = None,
    *,
    container: StreamingContainer | None = None,
) -> None:
    """Configure the event channels only (seed: ``init_channels``)."""
    container = container or get_container()
    current: StreamingOptions = container.options()
    options = replace(
        current,
        redis=_as_redis_config(redis_config) or current.redis,
        channel=config or current.channel,
    )
    _configure(container, options)


def init_event_storage(
    host: str | None = None,
    port: int = 9200,
    index_prefix: str = "stream_events",
    *,
    use_ssl: bool = False,
    auth_type: Literal["none", "basic", "aws"] = "none",
    username: str | None = None,
    password: str | None = None,
    container: StreamingContainer | None = None,
) -> None:
    """Store every stream event (seed: ``init_event_storage``): in OpenSearch at ``host``, or in
    memory when ``host`` is None. Writes never delay delivery (see `StorageWriter`)."""
    container = container or get_container()
    storage = StorageConfig(host, port, index_prefix, use_ssl, auth_type, username, password)
    current: StreamingOptions = container.options()
    _configure(container, replace(current, enable_storage=True, storage=storage))


def init_telemetry(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    user_ids: UserIdPolicy = "raw",
    container: StreamingContainer | None = None,
) -> None:
    """Use these OpenTelemetry providers instead of the global ones (tests, multi-tenant apps),
    and choose how user ids appear in spans (``"raw"``, ``"hash"`` or ``"drop"``)."""
    if user_ids not in ("raw", "hash", "drop"):
        raise ConfigurationError(f"user_ids must be 'raw', 'hash' or 'drop', got {user_ids!r}")
    container = container or get_container()
    current: StreamingOptions = container.options()
    options = replace(
        current,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        telemetry_user_ids=user_ids,
    )
    container.options.set_provides(options)  # nothing else changes: no backend restart
    container.telemetry.reset()


def _as_redis_config(value: QueueRedisConfig | str | None) -> QueueRedisConfig | None:
    return QueueRedisConfig(value) if isinstance(value, str) else value
