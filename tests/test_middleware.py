"""StreamingMiddleware over the raw ASGI harness, under ASGI spec 2.3 and 2.4.

Each test drives the app with scripted receive/send, so it controls exactly when the client
goes away and can watch the lease at every step.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request

from streaming_mw import (
    SSE_HEADERS,
    BackendUnavailableError,
    ConfigurationError,
    Lease,
    StreamingMiddleware,
    StreamLeaseConfig,
    StreamLimitExceeded,
    add_exception_handlers,
    init_streaming,
    lease_dependency,
    stream_lease,
)
from streaming_mw.leases import MemoryLeaseLimiter
from streaming_mw.runtime import StreamingContainer
from streaming_mw.sse import PING, encode
from tests.helpers.asgi import AsgiClient, LifespanError, lifespan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from tests.helpers.asgi import SpecVersion

pytestmark = pytest.mark.parametrize("spec", ["2.3", "2.4"])


class CountingLimiter(MemoryLeaseLimiter):
    """A memory limiter that counts the releases that really gave a slot back."""

    def __init__(self, config: StreamLeaseConfig) -> None:
        super().__init__(config)
        self.releases: list[str] = []

    async def release(self, lease: Lease) -> None:
        if not lease.released:
            self.releases.append(lease.lease_id)
        await super().release(lease)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def ticks(count: int = 10_000, delay: float = 0.01) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for index in range(count):
            yield encode(data=str(index), event="token", id=str(index))
            await asyncio.sleep(delay)

    return gen()


@pytest.fixture
def limiter() -> CountingLimiter:
    return CountingLimiter(StreamLeaseConfig(limit=2, ttl_seconds=30))


@pytest.fixture
def container(limiter: CountingLimiter, monkeypatch: pytest.MonkeyPatch) -> StreamingContainer:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("STREAMING_MODE", "memory")
    container = StreamingContainer()
    container.lease_limiter.override(limiter)
    return container


def build_app(container: StreamingContainer) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/chat")
    async def chat(user: str, count: int = 10_000, fail: bool = False) -> StreamingResponse:
        try:
            async with stream_lease(user):
                if fail:
                    raise HTTPException(400, "bad prompt")
                return StreamingResponse(ticks(count), headers=dict(SSE_HEADERS))
        except StreamLimitExceeded:
            raise HTTPException(429, "Too many concurrent streams") from None

    app.state.gate = asyncio.Event()

    @app.get("/inner")
    async def inner(user: str) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            async with stream_lease(user):
                yield encode(data="held", event="state")
                await app.state.gate.wait()
            yield encode(data="released", event="state")
            await asyncio.sleep(30)

        return StreamingResponse(gen(), headers=dict(SSE_HEADERS))

    @app.get("/json")
    async def plain(user: str) -> JSONResponse:
        async with stream_lease(user):
            return JSONResponse({"ok": True})

    @app.get("/unhandled")
    async def unhandled(user: str) -> StreamingResponse:
        async with stream_lease(user, limit=1):
            return StreamingResponse(ticks(), headers=dict(SSE_HEADERS))

    @app.get("/crash-after")
    async def crash_after(user: str) -> StreamingResponse:
        async with stream_lease(user):
            pass
        raise RuntimeError("handler failed after the block")

    return app


async def test_seed_snippet_holds_the_lease_until_the_body_ends(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/chat?user=u&count=5") as response:
            assert response.status == 200
            assert (await response.read_event()).data == "0"
            assert await limiter.active("u") == 1
            assert container.stream_registry().by_user() == {"u": 1}
            await response.read_all()
        await eventually(lambda: _zero(limiter, "u"))
        assert len(limiter.releases) == 1
        assert container.stream_registry().count() == 0


async def _zero(limiter: MemoryLeaseLimiter, user: str) -> bool:
    return await limiter.active(user) == 0


async def test_disconnect_releases_the_lease_once_and_admits_the_next(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with (
            client.stream("GET", "/chat?user=u") as first,
            client.stream("GET", "/chat?user=u") as second,
        ):
            await first.read_event()
            await second.read_event()
            async with client.stream("GET", "/chat?user=u") as third:
                assert third.status == 429
            first.disconnect()
            await eventually(lambda: _count_is(limiter, "u", 1), timeout=1.0)
            async with client.stream("GET", "/chat?user=u") as fourth:
                assert fourth.status == 200
                assert (await fourth.read_event()).event == "token"
        await eventually(lambda: _zero(limiter, "u"))
        assert len(limiter.releases) == len(set(limiter.releases)) == 3
        assert container.stream_registry().count() == 0


async def _count_is(limiter: MemoryLeaseLimiter, user: str, count: int) -> bool:
    return await limiter.active(user) == count


async def test_handler_failing_inside_the_block_releases_at_once(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/chat?user=u&fail=true") as response:
            assert response.status == 400
        assert await limiter.active("u") == 0
        assert len(limiter.releases) == 1


async def test_handler_failing_after_the_block_releases_the_deferred_lease(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/crash-after?user=u") as response:
            assert response.status == 500
        await eventually(lambda: _zero(limiter, "u"))
        assert len(limiter.releases) == 1


async def test_lease_inside_the_body_is_released_when_its_block_exits(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/inner?user=u") as response:
            assert (await response.read_event()).data == "held"
            [stream] = container.stream_registry().streams("u")
            assert len(stream.lease_ids) == 1
            assert await limiter.active("u") == 1
            app.state.gate.set()
            assert (await response.read_event()).data == "released"
            assert await limiter.active("u") == 0
            [stream] = container.stream_registry().streams("u")
            assert stream.lease_ids == ()
            response.disconnect()
        assert len(limiter.releases) == 1


async def test_plain_response_from_inside_the_block(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/json?user=u") as response:
            assert orjson.loads(await response.read_all()) == {"ok": True}
        await eventually(lambda: _zero(limiter, "u"))
        assert len(limiter.releases) == 1
        assert container.stream_registry().count() == 0


async def test_unhandled_limit_becomes_429_with_retry_after(
    spec: SpecVersion, container: StreamingContainer
) -> None:
    app = build_app(container)
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/unhandled?user=u") as first:
            await first.read_event()
            async with client.stream("GET", "/unhandled?user=u") as second:
                assert second.status == 429
                retry_after = second.header("retry-after")
                assert retry_after is not None
                assert 1 <= int(retry_after) <= 60
                body = orjson.loads(await second.read_all())
            assert (body["limit"], body["scope"]) == (1, "user")
            assert body["detail"] == "Too many concurrent streams"


async def test_registry_lists_open_streams_per_user(
    spec: SpecVersion, container: StreamingContainer
) -> None:
    app = build_app(container)
    registry = container.stream_registry()
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with (
            client.stream("GET", "/chat?user=a") as first,
            client.stream("GET", "/chat?user=b") as second,
        ):
            await first.read_event()
            await second.read_event()
            assert registry.count() == 2
            assert registry.count("a") == 1
            assert registry.by_user() == {"a": 1, "b": 1}
            [stream] = registry.streams("a")
            assert stream.path == "/chat"
            assert len(stream.lease_ids) == 1
            first.disconnect()
            second.disconnect()
        await eventually(lambda: _registry_empty(container))


async def _registry_empty(container: StreamingContainer) -> bool:
    return container.stream_registry().count() == 0


def identity(request: Request) -> str:
    user = request.headers.get("x-user")
    if user is None:
        raise HTTPException(401, "who are you?")
    return user


async def test_lease_dependency_lives_as_long_as_the_response(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)
    add_exception_handlers(app)

    @app.get("/dep")
    async def dep(lease: Lease = Depends(lease_dependency(identity, limit=1))) -> StreamingResponse:
        return StreamingResponse(ticks(), headers=dict(SSE_HEADERS))

    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        headers = {"x-user": "u"}
        async with client.stream("GET", "/dep", headers=headers) as first:
            await first.read_event()
            assert await limiter.active("u") == 1
            async with client.stream("GET", "/dep", headers=headers) as second:
                assert second.status == 429
                assert second.header("retry-after") is not None
            first.disconnect()
        await eventually(lambda: _zero(limiter, "u"))
        async with client.stream("GET", "/dep") as anonymous:
            assert anonymous.status == 401


async def test_lease_dependency_without_middleware_is_a_clear_error(spec: SpecVersion) -> None:
    app = FastAPI()

    @app.get("/dep")
    async def dep(lease: Lease = Depends(lease_dependency(identity))) -> dict[str, str]:
        return {"lease": lease.lease_id}

    client = AsgiClient(app, spec_version=spec)
    async with client.stream("GET", "/dep", headers={"x-user": "u"}) as response:
        assert response.status == 500
        await response.wait_finished()
    assert isinstance(response.exception, ConfigurationError)
    assert "StreamingMiddleware" in str(response.exception)


async def test_lifespan_wraps_the_apps_own_and_releases_leftovers(
    spec: SpecVersion, container: StreamingContainer, limiter: CountingLimiter
) -> None:
    seen: dict[str, Any] = {}
    held: list[Lease] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        seen["started_during_app_startup"] = container.runtime().started
        lease = await container.lease_limiter().acquire("leftover")
        container.lease_keeper().hold(lease)
        held.append(lease)
        yield
        seen["started_during_app_shutdown"] = container.runtime().started

    app = FastAPI(lifespan=app_lifespan)
    app.add_middleware(StreamingMiddleware, container=container)
    async with lifespan(app):
        assert container.runtime().started
    assert seen == {"started_during_app_startup": True, "started_during_app_shutdown": True}
    assert held[0].released
    assert not container.runtime().started


async def test_init_streaming_inside_the_apps_startup_is_applied(
    spec: SpecVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    container = StreamingContainer()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        init_streaming(lease_config=StreamLeaseConfig(limit=1), container=container)
        yield

    app = build_app(container)
    app.router.lifespan_context = app_lifespan
    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/chat?user=u") as first:
            await first.read_event()
            async with client.stream("GET", "/chat?user=u") as second:
                assert second.status == 429
            first.disconnect()


async def test_failed_container_start_fails_the_servers_startup(
    spec: SpecVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMING_MODE", "redis")
    monkeypatch.delenv("REDIS_URL", raising=False)
    app_started: list[bool] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        app_started.append(True)
        yield

    app = FastAPI(lifespan=app_lifespan)
    app.add_middleware(StreamingMiddleware, container=StreamingContainer())
    with pytest.raises(LifespanError, match="REDIS_URL"):
        async with lifespan(app):
            pass
    assert app_started == []


async def test_unreachable_backend_becomes_503_with_retry_after(
    spec: SpecVersion, container: StreamingContainer
) -> None:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/down")
    async def down() -> None:
        raise BackendUnavailableError("Redis unavailable during event publish")

    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        async with client.stream("GET", "/down") as response:
            assert response.status == 503
            assert response.header("retry-after") == "1"
            assert "unavailable" in orjson.loads(await response.read_all())["detail"]


async def test_the_registry_counts_the_events_of_a_direct_stream_not_its_comments(
    spec: SpecVersion, container: StreamingContainer
) -> None:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)
    gate = asyncio.Event()

    @app.get("/mixed")
    async def mixed() -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            yield encode(data="a", event="token", id="1")
            yield PING
            yield encode(data="b", id="2") + encode(comment="x") + encode(data="c", id="3")
            yield encode(comment="only\ncomments")
            await gate.wait()

        return StreamingResponse(gen(), headers=dict(SSE_HEADERS))

    async with lifespan(app):
        client = AsgiClient(app, spec_version=spec)
        before = time.time()
        async with client.stream("GET", "/mixed") as response:
            assert [(await response.read_event()).data for _ in range(3)] == ["a", "b", "c"]
            [stream] = container.stream_registry().streams()
            assert stream.events == 3
            assert stream.last_event_at is not None
            assert before <= stream.last_event_at <= time.time()
            gate.set()
            await response.read_all()
        await eventually(lambda: _registry_empty(container))
