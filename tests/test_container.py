"""The DI container: backend selection at startup, the fallback warning, configuration calls."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest
from dependency_injector import providers

from streaming_mw import (
    BackendUnavailableError,
    ConfigurationError,
    QueueRedisConfig,
    StreamLeaseConfig,
    StreamLimitExceeded,
    init_streaming,
    stream_lease,
)
from streaming_mw._redis import make_client
from streaming_mw.channels import MemoryChannelBackend
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.leases import FailoverLeaseLimiter, MemoryLeaseLimiter, RedisLeaseLimiter
from streaming_mw.runtime import StreamingContainer, get_container, init_lease_limiter
from streaming_mw.runtime.startup import (
    apply_pending_options,
    ensure_started,
    start_container,
    stop_container,
)
from tests.helpers.redis_server import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

FALLBACK = "STREAMING FALLBACK"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("STREAMING_MODE", raising=False)


@pytest.fixture
def caplog_streaming(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="streaming_mw"):
        yield caplog


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(FALLBACK)
    ]


async def test_without_redis_url_memory_and_exactly_one_warning(
    caplog_streaming: pytest.LogCaptureFixture,
) -> None:
    container = StreamingContainer()
    await start_container(container)
    await start_container(container)  # a second app sharing the container
    try:
        assert isinstance(container.lease_limiter(), MemoryLeaseLimiter)
        assert container.runtime().backend == "memory"
    finally:
        await stop_container(container)
        await stop_container(container)
    [warning] = fallback_warnings(caplog_streaming)
    assert "REDIS_URL is not set" in warning.getMessage()


@pytest.mark.redis
async def test_with_reachable_redis_leases_are_in_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog_streaming: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    container = StreamingContainer()
    await start_container(container)
    try:
        limiter = container.lease_limiter()
        assert isinstance(limiter, FailoverLeaseLimiter)
        assert isinstance(limiter.primary, RedisLeaseLimiter)
        lease = await limiter.acquire("u")
        assert lease.limiter is limiter.primary
        await lease.release()
    finally:
        await stop_container(container)
    assert fallback_warnings(caplog_streaming) == []


async def test_unreachable_redis_falls_back_without_hanging(
    monkeypatch: pytest.MonkeyPatch, caplog_streaming: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")
    container = StreamingContainer()
    await asyncio.wait_for(start_container(container), 10)
    try:
        assert isinstance(container.lease_limiter(), MemoryLeaseLimiter)
    finally:
        await stop_container(container)
    [warning] = fallback_warnings(caplog_streaming)
    assert "did not answer" in warning.getMessage()
    assert "secret" not in caplog_streaming.text


async def test_mode_redis_without_redis_fails_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMING_MODE", "redis")
    container = StreamingContainer()
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        await start_container(container)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BackendUnavailableError, match="did not answer"):
        await asyncio.wait_for(start_container(container), 10)
    assert not container.runtime().started


@pytest.mark.redis
async def test_mode_memory_ignores_redis_and_does_not_warn(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog_streaming: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMING_MODE", "memory")
    container = StreamingContainer()
    await start_container(container)
    try:
        assert isinstance(container.lease_limiter(), MemoryLeaseLimiter)
    finally:
        await stop_container(container)
    assert fallback_warnings(caplog_streaming) == []


@pytest.mark.redis
async def test_init_streaming_overrides_the_environment(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    container = StreamingContainer()
    init_streaming(
        QueueRedisConfig(redis_url),
        lease_config=StreamLeaseConfig(limit=1, key_namespace="custom"),
        container=container,
    )
    await start_container(container)
    try:
        limiter = container.lease_limiter()
        assert isinstance(limiter, FailoverLeaseLimiter)
        assert isinstance(limiter.primary, RedisLeaseLimiter)
        assert limiter.primary.key("u") == "custom:{u}"
        assert limiter.primary.config.limit == 1
    finally:
        await stop_container(container)


@pytest.mark.redis
async def test_init_lease_limiter_sets_redis_lease_config_and_policy(redis_url: str) -> None:
    container = StreamingContainer()
    init_lease_limiter(redis_url, StreamLeaseConfig(limit=3), policy="reject", container=container)
    await start_container(container)
    try:
        limiter = container.lease_limiter()
        assert isinstance(limiter, FailoverLeaseLimiter)
        assert limiter.policy == "reject"
        assert limiter.primary.config.limit == 3  # type: ignore[attr-defined]
    finally:
        await stop_container(container)


async def test_init_streaming_after_start_is_applied_on_next_use() -> None:
    container = StreamingContainer()
    await start_container(container)
    try:
        init_streaming(lease_config=StreamLeaseConfig(limit=1), container=container)
        assert container.runtime().pending_options
        await ensure_started(container)  # what the first stream_lease of a request does
        assert not container.runtime().pending_options
        limiter = container.lease_limiter()
        assert isinstance(limiter, MemoryLeaseLimiter)
        assert limiter.config.limit == 1
    finally:
        await stop_container(container)


async def test_override_swaps_a_piece_for_tests() -> None:
    container = StreamingContainer()
    custom = MemoryLeaseLimiter(StreamLeaseConfig(limit=7))
    with container.lease_limiter.override(providers.Object(custom)):
        await start_container(container)
        try:
            assert container.lease_limiter() is custom
        finally:
            await stop_container(container)


async def test_stream_lease_without_any_lifespan_starts_the_default_container() -> None:
    container = get_container()
    assert get_container() is container
    try:
        async with stream_lease("solo") as lease:
            assert container.runtime().started
            assert await container.lease_limiter().active("solo") == 1
        assert lease.released
    finally:
        await stop_container(container)
    assert not container.runtime().started


async def test_stop_is_idempotent_and_counted() -> None:
    container = StreamingContainer()
    await stop_container(container)  # never started: nothing happens
    await start_container(container)
    await ensure_started(container)  # already running: no second user
    await stop_container(container)
    assert not container.runtime().started
    await stop_container(container)


@pytest.fixture
async def black_hole() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_probe_of_a_hung_redis_falls_back_with_a_reason(
    black_hole: str, caplog_streaming: pytest.LogCaptureFixture
) -> None:
    container = StreamingContainer()
    init_streaming(
        QueueRedisConfig(black_hole, connect_timeout=0.3, socket_timeout=0.3), container=container
    )
    await asyncio.wait_for(start_container(container), 10)
    try:
        assert isinstance(container.lease_limiter(), MemoryLeaseLimiter)
    finally:
        await stop_container(container)
    [warning] = fallback_warnings(caplog_streaming)
    assert "TimeoutError" in warning.getMessage()


async def test_lease_operations_on_a_hung_redis_are_bounded(black_hole: str) -> None:
    client = make_client(QueueRedisConfig(black_hole, connect_timeout=0.3, socket_timeout=0.3))
    limiter = RedisLeaseLimiter(client, operation_timeout=0.5)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailableError):
            await asyncio.wait_for(limiter.acquire("u"), 10)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await client.aclose()


async def test_init_streaming_during_startup_warns_once(
    caplog_streaming: pytest.LogCaptureFixture,
) -> None:
    container = StreamingContainer()
    await start_container(container)
    try:
        init_streaming(lease_config=StreamLeaseConfig(limit=4), container=container)
        await apply_pending_options(container)
        limiter = container.lease_limiter()
        assert isinstance(limiter, MemoryLeaseLimiter)
        assert limiter.config.limit == 4
    finally:
        await stop_container(container)
    assert len(fallback_warnings(caplog_streaming)) == 1


async def test_restart_with_unchanged_lease_config_keeps_held_slots() -> None:
    container = StreamingContainer()
    await start_container(container)
    try:
        lease = await container.lease_limiter().acquire("u", limit=1)
        init_streaming(container=container)  # same lease config
        await apply_pending_options(container)
        with pytest.raises(StreamLimitExceeded):
            await container.lease_limiter().acquire("u", limit=1)
        await lease.release()
    finally:
        await stop_container(container)


@pytest.mark.redis
async def test_channel_taken_before_start_is_rebuilt_on_redis(redis_url: str) -> None:
    container = StreamingContainer()
    init_streaming(redis_url, container=container)
    early = container.stream_channel()
    assert isinstance(early.backend, MemoryChannelBackend)
    await start_container(container)
    try:
        assert isinstance(container.stream_channel().backend, RedisChannelBackend)
    finally:
        await stop_container(container)
