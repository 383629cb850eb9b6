"""The test harness itself: redis-server, raw ASGI driving, uvicorn, the SSE client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import redis.asyncio
import redis.exceptions
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect

from tests.apps.basic import Probe, build_app
from tests.helpers.asgi import AsgiClient, IncompleteResponse, LifespanError, lifespan
from tests.helpers.redis_server import port_accepts
from tests.helpers.sse_client import BodyDecoder, IncompleteBody, SSEClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Message, Receive, Scope, Send

    from tests.helpers.redis_server import RedisServer
    from tests.helpers.uvicorn_server import StartUvicornProcess, StartUvicornThread

START: Message = {"type": "http.response.start", "status": 200, "headers": []}
CHUNK: Message = {"type": "http.response.body", "body": b"x", "more_body": True}


# --- redis-server ---------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_server_answers_ping(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert await redis_client.ping() is True


@pytest.mark.redis
async def test_redis_kill_then_start_on_same_port(redis_server: RedisServer) -> None:
    port, pid = redis_server.port, redis_server.pid
    redis_server.kill()
    assert not redis_server.is_running()
    assert not port_accepts(redis_server.host, port)

    redis_server.start()
    assert (redis_server.port, redis_server.is_running()) == (port, True)
    assert redis_server.pid != pid
    client = redis.asyncio.from_url(redis_server.url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_client_fails_while_server_is_down(redis_server: RedisServer) -> None:
    redis_server.stop()
    client = redis.asyncio.from_url(redis_server.url, socket_connect_timeout=1)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_server_is_running_again_for_the_next_test(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    assert redis_server.is_running()
    assert await redis_client.ping() is True


@pytest.mark.redis
@pytest.mark.parametrize("run", [1, 2])
async def test_redis_database_is_empty_at_each_test(
    run: int, redis_client: redis.asyncio.Redis
) -> None:
    assert await redis_client.dbsize() == 0
    await redis_client.set(b"left-behind", str(run))
    assert await redis_client.get(b"left-behind") == str(run).encode()


# --- raw ASGI harness -----------------------------------------------------------------------


async def test_asgi_reads_an_endless_stream_incrementally() -> None:
    probe = Probe()
    async with AsgiClient(build_app(probe)).stream("GET", "/endless?delay=0.01") as response:
        assert response.status == 200
        assert (response.header("Content-Type") or "").startswith("text/event-stream")
        assert [(await response.read_event()).data for _ in range(3)] == ["0", "1", "2"]
        assert not probe.finished.is_set()
    assert response.finished
    assert response.exception is None
    assert probe.cancelled.is_set()
    assert probe.finished.is_set()


async def test_asgi_reads_a_finite_stream_to_its_end() -> None:
    async with AsgiClient(build_app()).stream("GET", "/events?count=3") as response:
        events = [await response.read_event() for _ in range(3)]
        with pytest.raises(EOFError):
            await response.read_event()
    assert [(e.id, e.event, json.loads(e.data)) for e in events] == [
        ("0", "tick", {"i": 0}),
        ("1", "tick", {"i": 1}),
        ("2", "tick", {"i": 2}),
    ]
    assert response.comments == ["stream start"]


async def test_asgi_reads_a_plain_body_and_sends_the_request_body() -> None:
    client = AsgiClient(build_app())
    async with client.stream("GET", "/json") as response:
        assert json.loads(await response.read_all())["ok"] is True
    body = b'{"hello": "world"}'
    headers = {"content-type": "application/json"}
    async with client.stream("POST", "/echo", headers=headers, body=body) as response:
        assert json.loads(await response.read_all()) == {"hello": "world"}


async def test_asgi_spec_23_delivers_disconnect_and_ignores_late_sends() -> None:
    received: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append((await receive())["type"])
        await send(START)
        received.append((await receive())["type"])
        await send(CHUNK)

    async with AsgiClient(app, spec_version="2.3").stream("GET", "/") as response:
        response.disconnect()
        await response.wait_finished()
    assert received == ["http.request", "http.disconnect"]
    assert response.exception is None


async def test_asgi_spec_24_fails_send_and_never_returns_disconnect() -> None:
    send_errors: list[OSError] = []
    receive_returned: list[bool] = []
    go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(START)
        listener = asyncio.ensure_future(receive())
        await go.wait()
        try:
            await send(CHUNK)
        except OSError as exc:
            send_errors.append(exc)
        receive_returned.append(listener.done())
        listener.cancel()

    async with AsgiClient(app, spec_version="2.4").stream("GET", "/") as response:
        response.disconnect()
        go.set()
        await response.wait_finished()
    assert len(send_errors) == 1
    assert receive_returned == [False]


async def test_asgi_spec_24_starlette_streaming_raises_client_disconnect() -> None:
    probe = Probe()
    client = AsgiClient(build_app(probe), spec_version="2.4")
    async with client.stream("GET", "/endless?delay=0.01") as response:
        await response.read_event()
        response.disconnect()
        await response.wait_finished()
    assert isinstance(response.exception, ClientDisconnect)


async def test_asgi_cancels_an_app_that_never_notices_the_disconnect() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await asyncio.Event().wait()

    async with AsgiClient(app, spec_version="2.4").stream("GET", "/", grace=0.1) as response:
        with pytest.raises(TimeoutError):
            await response.read_chunk(timeout=0.05)
    assert response.cancelled


async def test_asgi_reports_an_app_failing_before_the_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("boom")

    with pytest.raises(IncompleteResponse) as info:
        async with AsgiClient(app).stream("GET", "/"):
            pass
    assert isinstance(info.value.__cause__, ValueError)


async def test_lifespan_runs_startup_and_shutdown() -> None:
    steps: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        steps.append("startup")
        yield {"greeting": "hello"}
        steps.append("shutdown")

    async with lifespan(Starlette(lifespan=app_lifespan)) as state:
        assert steps == ["startup"]
        assert state == {"greeting": "hello"}
    assert steps == ["startup", "shutdown"]


async def test_lifespan_raises_when_startup_fails() -> None:
    def connect_database() -> None:
        raise RuntimeError("no database")

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        connect_database()
        yield

    with pytest.raises(LifespanError, match="no database"):
        async with lifespan(Starlette(lifespan=app_lifespan)):
            pass


# --- uvicorn in a thread + SSE client -------------------------------------------------------


async def test_uvicorn_thread_streams_events_to_the_sse_client(
    uvicorn_thread: StartUvicornThread,
) -> None:
    server = uvicorn_thread(build_app())
    async with SSEClient.connect(server.base_url, "/events?count=5&delay=0.01") as client:
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        assert client.headers["transfer-encoding"] == "chunked"
        events = [event async for event in client.events()]
        with pytest.raises(EOFError):
            await client.next_event()
    assert [event.id for event in events] == ["0", "1", "2", "3", "4"]
    assert client.comments == ["stream start"]
    assert client.last_event_id == "4"


async def test_sse_client_reads_an_endless_stream_incrementally(
    uvicorn_thread: StartUvicornThread,
) -> None:
    probe = Probe()
    server = uvicorn_thread(build_app(probe))
    async with SSEClient.connect(server.base_url, "/endless?delay=0.01") as client:
        assert [(await client.next_event()).data for _ in range(3)] == ["0", "1", "2"]
        assert not probe.finished.is_set()


async def test_sse_client_abort_cancels_the_server_side_generator(
    uvicorn_thread: StartUvicornThread,
) -> None:
    probe = Probe()
    server = uvicorn_thread(build_app(probe))
    async with SSEClient.connect(server.base_url, "/endless?delay=0.05") as client:
        await client.next_event()
        client.abort()
        assert await probe.wait(probe.finished, timeout=10)
    assert probe.cancelled.is_set()


async def test_sse_client_reads_plain_and_posted_json(
    uvicorn_thread: StartUvicornThread,
) -> None:
    server = uvicorn_thread(build_app())
    async with SSEClient.connect(server.base_url, "/json") as client:
        assert client.headers["content-length"]
        assert (await client.read_json())["pid"] == os.getpid()
    async with SSEClient.connect(
        (server.host, server.port), "/echo", method="POST", json={"n": [1, 2]}
    ) as client:
        assert await client.read_json() == {"n": [1, 2]}


def test_body_decoder_decodes_chunked_bytes_fed_one_at_a_time() -> None:
    raw = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"
    decoder = BodyDecoder("chunked")
    body = b"".join(decoder.feed(raw[i : i + 1]) for i in range(len(raw)))
    assert (body, decoder.done) == (b"hello world", True)


async def test_sse_client_survives_a_read_timeout(uvicorn_thread: StartUvicornThread) -> None:
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({**START, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.to_thread(release.wait, 10)
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    server = uvicorn_thread(app, lifespan="off")
    async with SSEClient.connect(server.base_url, "/") as client:
        assert (await client.next_event()).data == "1"
        with pytest.raises(TimeoutError):
            await client.next_event(timeout=0.05)
        release.set()
        assert (await client.next_event()).data == "2"
        with pytest.raises(EOFError):
            await client.next_event()


# --- uvicorn in a subprocess ----------------------------------------------------------------


async def test_uvicorn_process_serves_the_basic_app_and_dies_on_kill(
    uvicorn_process: StartUvicornProcess,
) -> None:
    server = uvicorn_process("tests.apps.basic:app", env={"BASIC_APP_TAG": "sub"})
    async with SSEClient.connect(server.base_url, "/json") as client:
        assert await client.read_json() == {"ok": True, "pid": server.pid, "tag": "sub"}
    async with SSEClient.connect(server.base_url, "/endless?delay=0.01") as client:
        await client.next_event()
        assert server.kill() == -signal.SIGKILL
        with pytest.raises(IncompleteBody):
            async for _ in client.events():
                pass
    assert not server.is_running()
    assert not port_accepts(server.host, server.port)
