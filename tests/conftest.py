"""Shared fixtures: a private redis-server, Redis clients, real uvicorn servers."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal

import pytest
import redis.asyncio

from streaming_mw._redis import make_sync_client
from streaming_mw.channels import MemoryChannelBackend
from streaming_mw.channels.redis import RedisChannelBackend
from streaming_mw.config import ChannelConfig, QueueRedisConfig, StreamLeaseConfig
from streaming_mw.leases import MemoryLeaseLimiter, RedisLeaseLimiter
from tests.helpers.redis_clients import client_for, fresh_client, redis_url_of
from tests.helpers.redis_cluster import RedisCluster, find_redis_cli
from tests.helpers.redis_server import RedisServer, find_redis_server
from tests.helpers.uvicorn_server import UvicornProcess, UvicornThread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from starlette.types import ASGIApp

    from streaming_mw._redis import AsyncRedis
    from streaming_mw.channels import ChannelBackend
    from streaming_mw.leases import LeaseLimiter
    from tests.helpers.channels import MakeBackend
    from tests.helpers.leases import MakeLimiter
    from tests.helpers.uvicorn_server import ServerKind, StartUvicornProcess, StartUvicornThread


BACKEND_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.redis),
]
"""The contract suites run against memory, one redis-server and a 3-master Redis Cluster."""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on a free port of 127.0.0.1 for the whole session.

    Tests may stop or kill it: it is started again before the next test using it.
    """
    binary = find_redis_server()
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH. Run the suite with scripts/test, "
            "which installs it, or install redis-server yourself.",
            pytrace=False,
        )
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A local Redis Cluster of 3 masters (no replicas) for the whole session.

    Tests must not stop its nodes; a failover test starts a cluster of its own.
    """
    binary, cli = find_redis_server(), find_redis_cli()
    if binary is None or cli is None:
        pytest.fail(
            "redis-server and redis-cli must be on PATH. Run the suite with scripts/test, "
            "which installs them, or install Redis (server and tools) yourself.",
            pytrace=False,
        )
    cluster = RedisCluster(binary, cli, tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _redis_server_running(request: pytest.FixtureRequest) -> None:
    """Bring the session redis-server back if an earlier test stopped or killed it."""
    if "redis_server" not in request.fixturenames:
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    if not server.is_running():
        server.start()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A persistent redis-server of the test's own: stopping it is an outage, not data loss."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server on PATH")
    server = RedisServer(binary, tmp_path, persistent=True)
    server.start()
    yield server
    if server.is_running():
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session redis-server, database 0."""
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A bytes client on an empty database; closed after the test."""
    client = redis.asyncio.from_url(redis_url, decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def uvicorn_thread() -> Iterator[StartUvicornThread]:
    """A function starting ``app`` under uvicorn in a thread; all are stopped at teardown."""
    servers: list[UvicornThread] = []

    def start(
        app: ASGIApp,
        port: int | None = None,
        *,
        lifespan: Literal["on", "off", "auto"] = "on",
    ) -> UvicornThread:
        server = UvicornThread(app, port, lifespan=lifespan)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def uvicorn_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartUvicornProcess]:
    """A function starting ``python -m uvicorn <path>`` in a child process.

    Processes still running at teardown are terminated; their logs are printed
    (pytest shows them for failed tests).
    """
    processes: list[UvicornProcess] = []
    log_dir = tmp_path_factory.mktemp("uvicorn")

    def start(
        app_import_path: str,
        env: dict[str, str] | None = None,
        *,
        workers: int = 1,
        server: ServerKind = "uvicorn",
        args: tuple[str, ...] = (),
    ) -> UvicornProcess:
        log_path = log_dir / f"uvicorn-{len(processes)}.log"
        process = UvicornProcess(
            app_import_path, env, log_path=log_path, workers=workers, server=server, args=args
        )
        processes.append(process)
        process.start()
        return process

    yield start
    for process in reversed(processes):
        if process.is_running():
            process.terminate()
        print(f"--- uvicorn {process.app_import_path} log ---\n{process.log_text()}")


@pytest.fixture(params=BACKEND_KINDS)
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    """Builds lease limiters of one backend; Redis ones share a fresh client on an empty
    database."""
    client: AsyncRedis | None = None
    if request.param != "memory":
        client = await fresh_client(request, request.param)

    def make(
        *, limit: int = 5, ttl_seconds: float = 180, global_limit: int | None = None
    ) -> LeaseLimiter:
        config = StreamLeaseConfig(limit=limit, ttl_seconds=ttl_seconds, global_limit=global_limit)
        if client is None:
            return MemoryLeaseLimiter(config)
        return RedisLeaseLimiter(client, config)

    try:
        yield make
    finally:
        if client is not None:
            await client.aclose()


@pytest.fixture(params=BACKEND_KINDS)
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[MakeBackend]:
    """Builds started backends of one kind; Redis ones on an empty database. All are closed."""
    kind: str = request.param
    url = None if kind == "memory" else redis_url_of(request, request.param)
    backends: list[ChannelBackend] = []
    clients: list[AsyncRedis] = []

    async def make(config: ChannelConfig | None = None) -> ChannelBackend:
        config = config or ChannelConfig()
        backend: ChannelBackend
        if url is None:
            backend = MemoryChannelBackend(config)
        else:
            client = client_for(url, request.param)
            if not clients:
                await client.flushall()
            clients.append(client)
            backend = RedisChannelBackend(client, config)
            # as the container sets it up: worker threads publish with a synchronous client
            sync = functools.partial(make_sync_client, QueueRedisConfig(url), kind == "cluster")
            backend.publish_from_threads(sync)
            await backend.start()
        backends.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in backends:
            await backend.aclose()
        for client in clients:
            await client.aclose()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REDIS_URL or STREAMING_MODE from the outside environment."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("STREAMING_MODE", raising=False)


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, clean_env: None) -> str | None:
    """None for the memory backends, else the URL of the session redis-server or of one node of
    the session cluster."""
    if request.param == "memory":
        return None
    return redis_url_of(request, request.param)
