"""A job belongs to who started it: through the documented routes (`examples.jobs.app`), another
user can neither read nor cancel it, nor follow its stream, in memory and Redis mode."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from streaming_mw import enqueue
from streaming_mw.errors import InvalidUserIdError
from streaming_mw.runtime import StreamingContainer, cancel, job_status
from streaming_mw.runtime.container import request_container
from streaming_mw.runtime.startup import start_container, stop_container
from tests.conftest import BACKEND_KINDS
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.redis_clients import redis_url_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@pytest.fixture(params=BACKEND_KINDS)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """memory, one redis-server, or one node of the local Redis Cluster."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    if request.param != "memory":
        monkeypatch.setenv("REDIS_URL", redis_url_of(request, request.param))
    monkeypatch.setenv("STREAMING_MODE", "memory" if request.param == "memory" else "redis")
    return str(request.param)


async def call(client: AsgiClient, method: str, path: str, user: str, body: Any = None) -> Any:
    headers = {"x-user": user, "content-type": "application/json"}
    raw = orjson.dumps(body) if body is not None else b""
    async with client.stream(method, path, headers=headers, body=raw) as response:
        return response.status, await response.read_all()


async def test_bob_can_neither_read_nor_cancel_alices_job(mode: str) -> None:
    from examples.jobs.app import app  # on the process's default container, as users run it

    async with lifespan(app):
        client = AsgiClient(app)
        body = {"steps": 50, "delay": 0.05}
        status, raw = await call(client, "POST", "/jobs/deploy", "alice", body)
        assert status == 200, raw
        handle = orjson.loads(raw)
        job = f"/jobs/{handle['job_id']}"

        assert (await call(client, "GET", job, "bob"))[0] == 404
        assert await call(client, "DELETE", job, "bob") == (200, b'{"cancelled":false}')
        events = f"/streams/{handle['stream_id']}"
        async with client.stream("GET", events, headers={"x-user": "bob"}) as followed:
            assert followed.status in (403, 404)
            await followed.read_all()

        status, raw = await call(client, "GET", job, "alice")
        assert status == 200
        assert orjson.loads(raw)["state"] in ("queued", "running")
        assert await call(client, "DELETE", job, "alice") == (200, b'{"cancelled":true}')


@contextlib.contextmanager
def using(container: StreamingContainer) -> Iterator[None]:
    """Make ``container`` the current one inside the test's own context (a fixture's context
    is not the test's under every pytest-asyncio release)."""
    token = request_container.set(container)
    try:
        yield
    finally:
        request_container.reset(token)


@pytest.fixture
async def started(mode: str) -> AsyncIterator[StreamingContainer]:
    container = StreamingContainer()
    await start_container(container)
    try:
        yield container
    finally:
        await stop_container(container)


async def test_job_status_and_cancel_check_the_owner(started: StreamingContainer) -> None:
    with using(started):
        handle = await enqueue("no.such.op", {"n": 1}, user_id="alice")
        mine = await job_status(handle.job_id, user_id="alice")
        assert mine is not None
        assert mine.owner == "alice"
        assert await job_status(handle.job_id, user_id="bob") is None
        assert await job_status(handle.job_id, user_id=None) == mine  # trusted: an operator tool
        assert await cancel(handle.job_id, user_id="bob") is False
        after = await job_status(handle.job_id, user_id="alice")
        assert after is not None
        assert after.error != "cancelled"
        public = await enqueue("no.such.op", {"n": 2})
        visible = await job_status(public.job_id, user_id="bob")
        assert visible is not None
        assert visible.owner is None


@pytest.mark.parametrize("owner", ["", "u" * 257])
async def test_an_empty_or_over_long_owner_is_refused_in_every_backend(
    started: StreamingContainer, owner: str
) -> None:
    with using(started):
        channel = started.stream_channel()
        with pytest.raises(InvalidUserIdError):
            await channel.create("owned-stream", owner=owner)
        assert await channel.meta("owned-stream") is None  # nothing was created
        with pytest.raises(InvalidUserIdError):
            await enqueue("op", {}, user_id=owner)
