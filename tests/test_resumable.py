"""`resumable_response` and `cancel_stream` in one process (memory), through the raw ASGI
harness: the first client, resume with ``Last-Event-ID``, the resume grace, the stop button,
a failing generator and the stream lease held while the generator runs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from streaming_mw import ChannelConfig
from streaming_mw.errors import StreamAccessDeniedError, StreamingError
from streaming_mw.runtime import StreamingContainer
from tests.apps.resumable import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.leases import eventually
from tests.helpers.resumable import data, new_id, read_until_end, seq

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    from tests.helpers.asgi import SpecVersion

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])


class App:
    def __init__(self, app: FastAPI, container: StreamingContainer, spec: SpecVersion) -> None:
        self.app = app
        self.container = container
        self.client = AsgiClient(app, spec_version=spec)

    async def json(self, method: str, path: str) -> tuple[int, Any]:
        async with self.client.stream(method, path) as response:
            body = await response.read_all()
            return response.status, orjson.loads(body) if body else None

    async def observed(self, stream_id: str) -> dict[str, Any]:
        return dict((await self.json("GET", f"/observed/{stream_id}"))[1])

    async def active(self, user: str) -> int:
        return int((await self.json("GET", f"/leases/{user}"))[1]["active"])


@pytest.fixture
async def make_app() -> AsyncIterator[Any]:
    async with asyncio.timeout(50):
        apps: list[Any] = []

        async def start(spec: SpecVersion = "2.4", **channel: Any) -> App:
            container = StreamingContainer()
            config = ChannelConfig(**channel) if channel else None
            app = build_app(container, mode="memory", channel_config=config)
            context = lifespan(app)
            await context.__aenter__()
            apps.append(context)
            return App(app, container, spec)

        yield start
        for context in reversed(apps):
            await context.__aexit__(None, None, None)


@SPECS
async def test_first_client_gets_every_token_with_cursor_ids(make_app: Any, spec: str) -> None:
    app = await make_app(spec)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=50&delay=0"
    async with app.client.stream("GET", path) as response:
        assert response.status == 200
        assert response.header("x-stream-id") == stream
        first = await response.read_event()
        assert (first.event, data(first), first.id) == ("stream", {"stream_id": stream}, None)
        events = await read_until_end(response.read_event)
    tokens, end = events[:-1], events[-1]
    assert [data(e)["token"] for e in tokens] == [f"t{i}" for i in range(1, 51)]
    assert [seq(e) for e in events] == list(range(1, 52))
    assert (end.event, data(end)) == ("complete", {"success": True})

    # the history holds the same events under the same ids
    async with app.client.stream("GET", f"/streams/{stream}?user={user}") as again:
        replayed = await read_until_end(again.read_event)
    assert [(e.id, e.event, e.data) for e in replayed] == [(e.id, e.event, e.data) for e in events]
    await eventually(lambda: _none_active(app, user))


async def _none_active(app: App, user: str) -> bool:
    return await app.active(user) == 0


@SPECS
async def test_drop_then_resume_with_last_event_id(make_app: Any, spec: str) -> None:
    app = await make_app(spec)
    user, stream = new_id("u"), new_id("s")
    async with app.client.stream("GET", f"/chat?user={user}&stream={stream}&delay=0.002") as r:
        await r.read_event()  # the stream id
        seen = [await r.read_event() for _ in range(20)]
        r.disconnect()
    cursor = seen[-1].id
    assert [data(e)["token"] for e in seen] == [f"t{i}" for i in range(1, 21)]
    await asyncio.sleep(1.0)
    headers = {"last-event-id": str(cursor)}
    async with app.client.stream("GET", f"/streams/{stream}?user={user}", headers=headers) as r:
        rest = await read_until_end(r.read_event)
    assert [data(e)["token"] for e in rest[:-1]] == [f"t{i}" for i in range(21, 201)]
    assert [seq(e) for e in rest] == list(range(21, 202))
    assert rest[-1].event == "complete"
    observed = await app.observed(stream)
    assert observed == {"produced": 200, "closed": True, "how": "end"}


async def test_someone_elses_stream_is_hidden(make_app: Any) -> None:
    app = await make_app()
    user, stream = new_id("u"), new_id("s")
    async with app.client.stream("GET", f"/chat?user={user}&stream={stream}&count=3&delay=0") as r:
        await read_until_end(r.read_event)
    status, _ = await app.json("GET", f"/streams/{stream}?user=mallory")
    assert status == 404


@SPECS
async def test_client_that_never_returns_closes_the_generator_after_grace(
    make_app: Any, spec: str
) -> None:
    app = await make_app(spec)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01&grace=1.5"
    async with app.client.stream("GET", path) as r:
        for _ in range(4):
            await r.read_event()
        assert await app.active(user) == 1
        r.disconnect()
    observed = await app.observed(stream)
    assert not observed["closed"]  # it goes on generating within the grace
    assert await app.active(user) == 1  # and holds its lease while it does

    async def closed() -> bool:
        return bool((await app.observed(stream))["closed"])

    await eventually(closed, timeout=10.0)
    assert (await app.observed(stream))["how"] in ("GeneratorExit", "CancelledError")
    await eventually(lambda: _none_active(app, user))
    async with app.client.stream("GET", f"/streams/{stream}?user={user}") as again:
        events = await read_until_end(again.read_event)
    assert (events[-1].event, data(events[-1])) == (
        "complete",
        {"success": False, "cancelled": True, "reason": "abandoned"},
    )


async def test_grace_zero_stops_at_once(make_app: Any) -> None:
    app = await make_app("2.4")
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01&grace=0"
    async with app.client.stream("GET", path) as r:
        await r.read_event()
        await r.read_event()
        r.disconnect()

    async def closed() -> bool:
        return bool((await app.observed(stream))["closed"])

    await eventually(closed, timeout=5.0)
    await eventually(lambda: _none_active(app, user))


async def test_a_follower_keeps_the_generation_alive(make_app: Any) -> None:
    app = await make_app("2.4")
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01&grace=1.0"
    async with app.client.stream("GET", path) as r:
        await r.read_event()
        first = await r.read_event()
        r.disconnect()
    headers = {"last-event-id": str(first.id)}
    async with app.client.stream("GET", f"/streams/{stream}?user={user}", headers=headers) as f:
        await f.read_event()
        await asyncio.sleep(2.5)  # more than the grace, with a follower
        assert not (await app.observed(stream))["closed"]
        last = await f.read_event()
        assert seq(last) > 2

    async def closed() -> bool:
        return bool((await app.observed(stream))["closed"])

    await eventually(closed, timeout=10.0)  # the follower left: the grace runs again


@SPECS
async def test_cancel_stream_stops_the_generator(make_app: Any, spec: str) -> None:
    app = await make_app(spec)
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=100000&delay=0.01"
    async with app.client.stream("GET", path) as r:
        await r.read_event()
        await r.read_event()
        assert await app.json("POST", f"/streams/{stream}/cancel?user=mallory") == (
            404,
            {"detail": f"no stream {stream!r}"},
        )
        assert await app.json("POST", f"/streams/{stream}/cancel?user={user}") == (
            200,
            {"cancelled": True},
        )
        events = await read_until_end(r.read_event)
    assert (events[-1].event, data(events[-1])) == (
        "complete",
        {"success": False, "cancelled": True, "reason": "cancelled"},
    )
    observed = await app.observed(stream)
    assert observed["closed"]
    assert observed["how"] in ("GeneratorExit", "CancelledError")
    await eventually(lambda: _none_active(app, user))
    assert await app.json("POST", f"/streams/{stream}/cancel?user={user}") == (
        200,
        {"cancelled": False},
    )
    status, _ = await app.json("POST", f"/streams/{new_id('s')}/cancel?user={user}")
    assert status == 404


async def test_cancel_by_another_user_is_forbidden_when_streams_are_not_hidden(
    make_app: Any,
) -> None:
    app = await make_app("2.4", hide_foreign_streams=False)
    user, stream = new_id("u"), new_id("s")
    async with app.client.stream("GET", f"/chat?user={user}&stream={stream}&count=2&delay=0") as r:
        await read_until_end(r.read_event)
    status, body = await app.json("POST", f"/streams/{stream}/cancel?user=mallory")
    assert (status, body) == (403, {"detail": "this stream belongs to another user"})
    assert issubclass(StreamAccessDeniedError, StreamingError)


async def test_failing_generator_ends_with_an_error_id_not_the_exception_text(
    make_app: Any,
) -> None:
    app = await make_app("2.4")
    user, stream = new_id("u"), new_id("s")
    path = f"/chat?user={user}&stream={stream}&count=10&delay=0&fail_after=4"
    async with app.client.stream("GET", path) as r:
        events = await read_until_end(r.read_event)
    end = events[-1]
    assert [data(e)["token"] for e in events[1:-1]] == ["t1", "t2", "t3"]
    assert end.event == "error"
    assert set(data(end)) == {"message", "reason", "error_id"}
    assert data(end)["reason"] == "internal_error"
    assert "hunter2" not in end.data
    await eventually(lambda: _none_active(app, user))
