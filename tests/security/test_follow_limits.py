"""Followers can be limited per user: `lease_dependency` on a follow route holds one of the
user's stream leases for as long as each follow lives (the documented choice)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response

from streaming_mw import (
    ChannelConfig,
    DeploymentEmitter,
    Lease,
    StreamingMiddleware,
    StreamLeaseConfig,
    init_streaming,
    lease_dependency,
    stream_response,
)
from streaming_mw.runtime import StreamingContainer
from tests.helpers.asgi import AsgiClient, lifespan


async def caller(x_user: str = Header()) -> str:
    return x_user


def build_app(container: StreamingContainer) -> FastAPI:
    app = FastAPI()
    app.add_middleware(StreamingMiddleware, container=container)

    @app.get("/streams/{stream_id}")
    async def follow(
        stream_id: str,
        request: Request,
        user: str = Depends(caller),
        lease: Lease = Depends(lease_dependency(caller)),
    ) -> Response:
        return stream_response(stream_id, request, user_id=user)

    return app


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> StreamingContainer:
    monkeypatch.delenv("REDIS_URL", raising=False)
    container = StreamingContainer()
    init_streaming(
        mode="memory",
        lease_config=StreamLeaseConfig(limit=3, ttl_seconds=30),
        channel_config=ChannelConfig(ping_interval=0.2),
        container=container,
    )
    return container


async def test_a_user_cannot_hold_more_follows_than_the_limit(
    container: StreamingContainer,
) -> None:
    app = build_app(container)
    async with lifespan(app):
        emitter = DeploymentEmitter(container.stream_channel(), owner="alice")
        await emitter.open()
        path = f"/streams/{emitter.stream_id}"
        client = AsgiClient(app)
        async with AsyncExitStack() as stack:
            for _ in range(3):
                response = await stack.enter_async_context(
                    client.stream("GET", path, headers={"x-user": "alice"})
                )
                assert response.status == 200
            async with client.stream("GET", path, headers={"x-user": "alice"}) as fourth:
                assert fourth.status == 429
                assert fourth.header("retry-after") is not None
                await fourth.read_all()
            assert container.stream_registry().count("alice") == 3
        # the three follows ended: their leases came back
        async with client.stream("GET", path, headers={"x-user": "alice"}) as again:
            assert again.status == 200
            await emitter.complete(success=True)
            await again.read_all()
