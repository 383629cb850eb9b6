"""Every process on one Redis should run the same lease configuration: each records its
fingerprint at startup, a different live one is named in one error, ``strict`` refuses to start.

Each container here is one process's: started in Redis mode on the session redis-server, on
Redis Cluster too.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

import pytest

from streaming_mw.config import StreamLeaseConfig
from streaming_mw.errors import ConfigurationError
from streaming_mw.runtime import StreamingContainer, init_streaming
from streaming_mw.runtime.startup import start_container, stop_container
from tests.helpers.redis_clients import fresh_client, redis_url_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Start = Callable[[StreamLeaseConfig], Awaitable[Any]]

pytestmark = pytest.mark.redis

MISMATCH = "STREAMING CONFIG MISMATCH"


@pytest.fixture(params=["redis", "cluster"])
async def start(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Start]:
    kind: Literal["redis", "cluster"] = request.param
    url = redis_url_of(request, kind)
    await (await fresh_client(request, kind)).aclose()  # an empty Redis
    monkeypatch.setenv("STREAMING_REDIS_CLUSTER", "true" if kind == "cluster" else "false")
    async with AsyncExitStack() as stack:

        async def start_one(config: StreamLeaseConfig) -> Any:
            container = StreamingContainer()
            init_streaming(url, mode="redis", lease_config=config, container=container)
            await start_container(container)
            stack.push_async_callback(stop_container, container)
            return container

        yield start_one


def mismatches(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if MISMATCH in r.getMessage()]


async def test_same_configuration_is_quiet(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    config = StreamLeaseConfig(limit=3, global_limit=5)
    for _ in range(2):
        await start(config)
    assert mismatches(caplog) == []


async def test_a_different_configuration_is_one_error_naming_both(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="streaming_mw")
    await start(StreamLeaseConfig(limit=3))
    await start(StreamLeaseConfig(limit=4))
    [record] = mismatches(caplog)
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "(limit=4 global_limit=None ttl_seconds=30 on_lease_lost=end)" in message
    assert "(limit=3 global_limit=None ttl_seconds=30 on_lease_lost=end)" in message


async def test_strict_refuses_to_start_and_records_nothing(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    await start(StreamLeaseConfig(limit=3))
    with pytest.raises(ConfigurationError, match=MISMATCH):
        await start(StreamLeaseConfig(limit=4, ttl_seconds=60, strict=True))
    caplog.clear()
    await start(StreamLeaseConfig(limit=3))
    assert mismatches(caplog) == []  # the refused one left no record behind


async def test_a_configuration_no_live_process_announces_goes_stale(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    first = await start(StreamLeaseConfig(limit=3))
    beacon = first.runtime().lease_beacon
    assert beacon is not None
    client = first.runtime().redis
    assert client is not None
    # Pretend the process died 31 s ago: its announcement is older than its TTL.
    await client.hset(beacon.key, beacon.config.fingerprint(), 0)
    await start(StreamLeaseConfig(limit=4))
    assert mismatches(caplog) == []
