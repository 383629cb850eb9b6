"""Starting and stopping a `StreamingContainer`: probe Redis, pick backends, fall back.

`start_container` (run by `StreamingMiddleware` at lifespan startup) reads the options and the
environment, probes Redis, and selects the Redis or memory implementations; without Redis it
logs one ``STREAMING FALLBACK`` warning and everything keeps working in one process.
`stop_container` releases what is still held and closes connections.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .._redis import is_cluster, make_client, make_cluster_client, make_sync_client
from ..config import QueueRedisConfig, StorageConfig, load_settings, redact_url
from ..errors import BackendUnavailableError, ConfigurationError
from ..leases.fingerprint import LeaseConfigBeacon
from ..storage.memory import MemoryEventStorage
from ..storage.writer import StorageWriter
from .container import get_container
from .heap import freeze_startup_heap

if TYPE_CHECKING:
    from .._redis import AsyncRedis
    from ..channels import MemoryChannelBackend
    from ..config import StreamingSettings
    from ..leases import MemoryLeaseLimiter
    from ..storage.base import EventStorage
    from ..telemetry import Telemetry
    from .container import Runtime, StreamingContainer, StreamingOptions
    from .heartbeat import LiveStreamHeartbeat
    from .keeper import LeaseKeeper
    from .runner import WorkerRunner

__all__ = ["apply_pending_options", "ensure_started", "start_container", "stop_container"]

log = logging.getLogger("streaming_mw")

_SHUTDOWN_TIMEOUT = 5.0


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


async def _connect(config: QueueRedisConfig, cluster: bool | None) -> tuple[AsyncRedis, bool]:
    """A client that answered, and whether it talks to a Redis Cluster (``cluster=None``: ask
    the node). A cluster URL naming a database other than 0 is a `ConfigurationError`."""
    if cluster is None:
        cluster = await is_cluster(config)
    client: AsyncRedis = make_cluster_client(config) if cluster else make_client(config)
    try:
        if isinstance(client, RedisCluster):
            await asyncio.wait_for(client.initialize(), config.connect_timeout + 1)
        await asyncio.wait_for(client.ping(), config.connect_timeout + 1)
    except BaseException:
        await client.aclose()
        raise
    return client, cluster


async def _start_backends(container: StreamingContainer, runtime: Runtime) -> None:
    for provider in (container.stream_channel, container.redis_job_queue):
        provider.reset()  # built before start (on memory)? rebuild on what start selects
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
        try:
            client, cluster = await _connect(redis_config, settings.streaming_redis_cluster)
        except (RedisError, RedisClusterException, OSError) as exc:
            where = redact_url(redis_config.url)
            reason = f"{where} did not answer: {type(exc).__name__}: {exc}".rstrip(": ")
            if mode == "redis":
                raise BackendUnavailableError(f"Redis at {reason}") from exc
            _fallback_warning(runtime, reason)
        else:
            runtime.backend, runtime.redis = "redis", client
            container.redis_client.set_provides(client)
            container.redis_config.set_provides(redis_config)
            container.mode.set_provides("redis")
            runtime.redis_channels = container.redis_channel_backend()
            # Worker threads publish with a synchronous client of their own, not via the loop.
            threads = functools.partial(make_sync_client, redis_config, cluster)
            runtime.redis_channels.publish_from_threads(threads)
            await runtime.redis_channels.start()
            runtime.lease_beacon = LeaseConfigBeacon(client, options.lease)
            try:
                await runtime.lease_beacon.start()
            except ConfigurationError:
                await _stop_backends(container, runtime)  # strict: refuse to start
                raise
            log.info(
                "streaming_mw: Redis backends at %s (%s)",
                redact_url(redis_config.url),
                "Redis Cluster" if cluster else "single node",
            )
    container.mode.set_provides(runtime.backend)
    if options.enable_storage:
        await _start_storage(container, options, settings)
    runtime.pending_options = False


async def _start_storage(
    container: StreamingContainer, options: StreamingOptions, settings: StreamingSettings
) -> None:
    config = options.storage or StorageConfig.from_settings(settings)
    storage: EventStorage
    if config.host is None:
        storage = MemoryEventStorage()
        log.info("streaming_mw: event storage in memory (no OpenSearch configured)")
    else:
        from ..storage.opensearch import OpenSearchEventStorage

        storage = OpenSearchEventStorage.from_settings(
            config.host,
            config.port,
            use_ssl=config.use_ssl,
            auth_type=config.auth_type,
            username=config.username,
            password=config.password,
            index_prefix=config.index_prefix,
        )
        log.info("streaming_mw: event storage in OpenSearch at %s:%d", config.host, config.port)
    telemetry: Telemetry = container.telemetry()
    writer = StorageWriter(
        storage,
        capacity=config.buffer_size,
        batch_size=config.batch_size,
        flush_interval=config.flush_interval,
        dropped_counter=telemetry.storage_dropped,
    )
    writer.start()
    container.stream_channel().sink = writer.offer_payload
    container.event_storage.set_provides(storage)
    container.storage_writer.set_provides(writer)


async def _stop_storage(container: StreamingContainer) -> None:
    writer: StorageWriter | None = container.storage_writer()
    storage: EventStorage | None = container.event_storage()
    container.storage_writer.set_provides(None)
    container.event_storage.set_provides(None)
    if writer is not None:
        await writer.stop(_SHUTDOWN_TIMEOUT)
    if storage is not None:
        await storage.aclose()


async def _stop_backends(container: StreamingContainer, runtime: Runtime) -> None:
    await _stop_storage(container)
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
    beacon, runtime.lease_beacon = runtime.lease_beacon, None
    if beacon is not None:
        await beacon.aclose()
    if runtime.redis_channels is not None:
        await runtime.redis_channels.aclose()
        runtime.redis_channels = None
    container.redis_channel_backend.reset()
    container.stream_channel.reset()
    container.redis_job_queue.reset()
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
            heartbeat: LiveStreamHeartbeat = container.stream_heartbeat()
            heartbeat.start(runtime.tasks)
            options: StreamingOptions = container.options()
            if options.channel.freeze_startup_heap:
                freeze_startup_heap()
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
        heartbeat: LiveStreamHeartbeat = container.stream_heartbeat()
        await heartbeat.stop()
        while runtime.closers:
            try:
                await runtime.closers.pop()()
            except Exception:
                log.exception("streaming_mw: a component failed to stop")
        for producer in list(runtime.producers.values()):
            producer.stop("shutdown")  # resumable generators end their streams visibly
        runner: WorkerRunner = container.worker_runner()
        await runner.aclose()  # in-process workers end their streams while Redis is still open
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
        memory_channels: MemoryChannelBackend = container.memory_channel_backend()
        await memory_channels.aclose()
        await _stop_backends(container, runtime)
        runtime.backend = None
    container.reset_singletons()
