"""The core streaming cases under every common ASGI server, each a real process in Redis mode:
uvicorn, Hypercorn (HTTP/1.1 and HTTP/2 cleartext), Granian, gunicorn with uvicorn workers.

- a direct stream's lease comes back when the client drops (the time is printed: it goes into
  the table of docs/deploying.md);
- a direct stream's burst, read slowly, arrives whole and in order (its chunks leave in a few
  writes, `coalesce_writes`, through each server's flow control);
- a queue stream resumes after ``Last-Event-ID`` with every event once;
- the stream over the limit is ``429`` with ``Retry-After``;
- keep-alive pings fill the silence.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest

from streaming_mw.sse import SSEEvent, SSEParser
from tests.helpers.servers import SERVER_KINDS, ServerKind, ServerProcess

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.helpers.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]

RELEASED: dict[str, float] = {}
"""Seconds from a client drop to its lease being free again, per server."""


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    kind: ServerKind = request.param
    env = {"REDIS_URL": redis_server.url, "STREAMING_MODE": "redis"}
    log_path = tmp_path_factory.mktemp("servers") / f"{kind}.log"
    process = ServerProcess(kind, "tests.apps.matrix:app", env=env, log_path=log_path)
    process.start()
    yield process
    process.terminate()
    if request.node.session.testsfailed:
        print(f"--- {kind} log ---\n{process.log_text()}")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for kind, seconds in RELEASED.items():
        print(f"lease released after a client drop: {kind}: {seconds:.3f}s")


def _client(server: ServerProcess) -> httpx.Client:
    if server.http2:  # HTTP/2 with prior knowledge, as h2c
        return httpx.Client(base_url=server.base_url, http1=False, http2=True, timeout=10)
    return httpx.Client(base_url=server.base_url, timeout=10)


def _active(server: ServerProcess, user: str) -> int:
    with _client(server) as client:
        active: int = client.get(f"/leases/{user}").json()["active"]
    return active


def _events(chunks: Iterator[bytes], until: int | None = None) -> list[SSEEvent]:
    parser, events = SSEParser(), []
    for chunk in chunks:
        events += [item for item in parser.feed(chunk) if isinstance(item, SSEEvent)]
        if until is not None and len(events) >= until:
            break
    return events


@pytest.mark.parametrize("delay", [0.05, 30.0], ids=["writing", "silent"])
def test_a_client_drop_releases_the_lease(server: ServerProcess, delay: float) -> None:
    """``silent``: the stream writes nothing after its first event, so the drop is seen only
    through the server's ``http.disconnect``, not through a failed write."""
    user = f"drop-{server.kind}-{delay:g}"
    client = _client(server)
    params: dict[str, str | float] = {"user": user, "delay": delay}
    with client.stream("GET", "/direct", params=params) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()  # kept: a collected generator would close the response
        assert len(_events(chunks, until=1 if delay > 1 else 3)) >= 1
        assert _active(server, user) == 1
        dropped = time.monotonic()
    client.close()  # the connection goes away, as when a tab closes
    while _active(server, user):
        assert time.monotonic() - dropped < 10, "the lease was not released within 10 s"
        time.sleep(0.01)
    RELEASED[f"{server.kind} ({'silent' if delay > 1 else 'writing'})"] = elapsed = (
        time.monotonic() - dropped
    )
    print(f"{server.kind}: lease released {elapsed:.3f}s after the drop")
    assert elapsed < 2


def test_a_burst_read_slowly_arrives_whole_and_in_order(server: ServerProcess) -> None:
    # 4,000 events of 1 KB at once: far more than the socket buffers hold, so the server's flow
    # control holds the batched writes back while the client pauses.
    user = f"burst-{server.kind}"
    ids: list[str | None] = []
    with (
        _client(server) as client,
        client.stream("GET", "/burst", params={"user": user, "n": 4000, "size": 1000}) as response,
    ):
        assert response.status_code == 200
        parser = SSEParser()
        for chunk in response.iter_bytes():
            ids += [e.id for e in parser.feed(chunk) if isinstance(e, SSEEvent)]
            if len(ids) % 1000 < 20:
                time.sleep(0.02)
    assert ids == [str(i) for i in range(4000)]
    ended = time.monotonic()
    while _active(server, user):  # released once the body ended
        assert time.monotonic() - ended < 10, "the lease was not released within 10 s"
        time.sleep(0.01)


def test_a_queue_stream_resumes_with_every_event_once(server: ServerProcess) -> None:
    with _client(server) as client:
        with client.stream("POST", "/deploy", params={"count": 20, "delay": 0.05}) as response:
            stream_id = response.headers["x-stream-id"]
            first = _events(response.iter_bytes(), until=5)
        cursor = first[-1].id
        assert cursor is not None
        headers = {"last-event-id": cursor, "accept": "text/event-stream"}
        with client.stream("GET", f"/streams/{stream_id}", headers=headers) as response:
            assert response.status_code == 200
            rest = _events(response.iter_bytes())
    events = first + rest
    assert [e.event for e in events] == ["log"] * 20 + ["complete"]
    assert [orjson.loads(e.data)["index"] for e in events[:20]] == list(range(20))
    with _client(server) as client:  # past the terminal event: 204, the browser stops
        end = client.get(f"/streams/{stream_id}", headers={"last-event-id": str(events[-1].id)})
    assert end.status_code == 204


def test_the_stream_over_the_limit_is_429(server: ServerProcess) -> None:
    user = f"limit-{server.kind}"
    with (
        _client(server) as client,
        client.stream("GET", "/direct", params={"user": user}) as one,
        client.stream("GET", "/direct", params={"user": user}) as two,
    ):
        assert (one.status_code, two.status_code) == (200, 200)
        third = client.get("/direct", params={"user": user})
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1


def test_silence_is_filled_with_pings(server: ServerProcess) -> None:
    with _client(server) as client:
        response = client.post("/deploy", params={"count": 2, "delay": 1.0})
    assert response.status_code == 200
    assert response.content.startswith(b"retry: ")
    assert b": ping\n\n" in response.content
    assert b"event: complete" in response.content


@pytest.fixture
def fresh(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[[ServerKind], ServerProcess]]:
    """Start a server of a kind for one test (it may be stopped); terminated at teardown."""
    started: list[ServerProcess] = []

    def start(kind: ServerKind) -> ServerProcess:
        env = {"REDIS_URL": redis_server.url, "STREAMING_MODE": "redis"}
        log_path = tmp_path / f"{kind}-{len(started)}.log"
        process = ServerProcess(kind, "tests.apps.matrix:app", env=env, log_path=log_path)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        if process.is_running():
            process.kill()
        print(f"--- {process.kind} log ---\n{process.log_text()}")


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_sigterm_ends_a_followed_stream_and_it_resumes_elsewhere(
    kind: ServerKind, fresh: Callable[[ServerKind], ServerProcess]
) -> None:
    """SIGTERM to the server while a followed stream is open: the stream ends (with the
    drain's ``retry:`` where a signal reaches the Python process) and resumes on another
    server with every event once."""
    server, other = fresh(kind), fresh("uvicorn")  # the other publishes, and serves the resume
    params = {"count": 200, "delay": 0.05}  # 10 s: longer than any server's grace period
    with _client(other) as client, client.stream("POST", "/deploy", params=params) as response:
        stream_id = response.headers["x-stream-id"]
    with _client(server) as client:
        headers = {"accept": "text/event-stream"}
        with client.stream("GET", f"/streams/{stream_id}", headers=headers) as response:
            chunks = response.iter_bytes()
            parser, events = SSEParser(), []
            raw = b""
            for chunk in chunks:
                raw += chunk
                events += [e for e in parser.feed(chunk) if isinstance(e, SSEEvent)]
                if len(events) >= 5:
                    break
            signalled = time.monotonic()
            server.process_signal(signal.SIGTERM)
            try:
                for chunk in chunks:
                    raw += chunk
                    events += [e for e in parser.feed(chunk) if isinstance(e, SSEEvent)]
            except httpx.HTTPError as exc:  # cut without a last frame
                print(f"{kind}: the stream was cut: {exc!r}")
            ended = time.monotonic() - signalled
    drained = b": shutdown: resume elsewhere" in raw
    print(f"{kind}: stream ended {ended:.2f}s after SIGTERM; drain hint: {drained}")
    assert ended < 15
    cursor = next((e.id for e in reversed(events) if e.id), None)
    with _client(other) as client:
        headers = {"last-event-id": str(cursor), "accept": "text/event-stream"}
        rest = client.get(f"/streams/{stream_id}", headers=headers)
    more = [e for e in SSEParser().feed(rest.content) if isinstance(e, SSEEvent)]
    assert rest.status_code == 200, raw  # cut before its end
    everything = [e for e in events if e.event == "log"] + more
    assert [e.event for e in everything] == ["log"] * 200 + ["complete"]
    assert [orjson.loads(e.data)["index"] for e in everything[:200]] == list(range(200))
