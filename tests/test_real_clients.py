"""What a browser expects, through real clients we did not write (the npm ``eventsource``
package, which follows the WHATWG EventSource rules, and plain httpx) over a real uvicorn
process in Redis mode:

- a follow made while Redis is down answers ``200`` + ``retry:``, so the client comes back and
  ends with every event once (a ``503`` made it give up for good); JSON clients keep the ``503``;
- a follow whose cursor is at the terminal event answers ``204``, so the client stops;
- every event stream starts with a deliberate ``retry:`` field.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from tests.helpers.node_client import Followed, node_or_skip, result, start_follow
from tests.helpers.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

APP = "tests.apps.drain:app"
COUNT = 20


def _serve(start: StartUvicornProcess, redis: RedisServer) -> UvicornProcess:
    return start(APP, {"REDIS_URL": redis.url, "STREAMING_MODE": "redis"})


def _finished_stream(server: UvicornProcess) -> str:
    """Run a deploy of ``COUNT`` log events to its end; return its stream id."""
    url = f"{server.base_url}/deploy?count={COUNT}&delay=0.005"
    with httpx.Client(timeout=10) as client:
        response = client.post(url, headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    assert "event: complete" in response.text
    return response.headers["x-stream-id"]


def _assert_every_event_once(followed: Followed, count: int = COUNT) -> None:
    events = followed["events"]
    types = [e["type"] for e in events]
    assert types == ["log"] * count + ["complete"], types
    assert [e["data"]["index"] for e in events[:count]] == list(range(count))
    assert len({e["id"] for e in events}) == len(events)


def test_a_finished_stream_answers_204_and_the_client_stops(
    uvicorn_process: StartUvicornProcess, own_redis: RedisServer
) -> None:
    node_or_skip()
    server = _serve(uvicorn_process, own_redis)
    stream_id = _finished_stream(server)
    started = time.monotonic()
    followed = result(start_follow(f"{server.base_url}/streams/{stream_id}", 15), timeout=30)
    print(f"followed in {time.monotonic() - started:.1f}s: {followed['requests']}")
    _assert_every_event_once(followed)
    last_id = followed["events"][-1]["id"]
    # One reconnect after `complete`, with the terminal cursor, answered 204: then nothing more.
    assert followed["requests"] == [
        {"status": 200, "lastEventId": None},
        {"status": 204, "lastEventId": last_id},
    ]
    assert followed["readyState"] == 2


def test_a_follow_during_a_redis_outage_comes_back_by_itself(
    uvicorn_process: StartUvicornProcess, own_redis: RedisServer
) -> None:
    node_or_skip()
    server = _serve(uvicorn_process, own_redis)
    stream_id = _finished_stream(server)
    url = f"{server.base_url}/streams/{stream_id}"
    own_redis.stop()
    started = time.monotonic()
    try:
        with httpx.Client(timeout=10) as client:  # a JSON client still gets the 503
            answer = client.get(url, headers={"accept": "application/json"})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        follower = start_follow(url, 25)
        time.sleep(3)  # the outage lasts while the client is refused
    finally:
        own_redis.start()
    followed = result(follower, timeout=40)
    print(f"followed in {time.monotonic() - started:.1f}s: {followed['requests']}")
    _assert_every_event_once(followed)
    statuses = [r["status"] for r in followed["requests"]]
    assert statuses[0] == 200, "a browser EventSource gives up for good on a non-200 answer"
    assert statuses[-2:] == [200, 204], statuses
    assert followed["readyState"] == 2


def test_every_event_stream_starts_with_retry(
    uvicorn_process: StartUvicornProcess, own_redis: RedisServer
) -> None:
    server = _serve(uvicorn_process, own_redis)
    url = f"{server.base_url}/deploy?count=2&delay=0"
    with httpx.Client(timeout=10) as client:
        response = client.post(url, headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.text.startswith("retry: 2000\n\n"), response.text[:80]


def test_a_connection_cut_during_a_redis_outage_resumes_every_event_once(
    uvicorn_process: StartUvicornProcess, own_redis: RedisServer
) -> None:
    """The issue's case: the connection drops at about event 80 of 300 while Redis is down for
    5 s; the client ends with every event once and ``complete``, then stops on ``204``."""
    node_or_skip()
    server = _serve(uvicorn_process, own_redis)
    publisher = _serve(uvicorn_process, own_redis)
    count = 300
    with httpx.Client(timeout=10) as client:  # the worker goes on after the client leaves
        url = f"{publisher.base_url}/deploy?count={count}&delay=0.02"
        with client.stream("POST", url) as response:
            stream_id = response.headers["x-stream-id"]
    with TcpProxy(server.port) as proxy:
        started = time.monotonic()
        follower = start_follow(f"{proxy.base_url}/streams/{stream_id}", 40)
        time.sleep(1.6)  # about 80 events
        own_redis.stop()
        try:
            proxy.cut()
            time.sleep(5)
        finally:
            own_redis.start()
        followed = result(follower, timeout=60)
    print(f"followed in {time.monotonic() - started:.1f}s: {followed['requests']}")
    _assert_every_event_once(followed, count)
    assert len(followed["requests"]) >= 3  # the cut, then at least one answer during the outage
    assert all(r["status"] in (200, 204) for r in followed["requests"]), followed["requests"]
    assert followed["requests"][-1]["status"] == 204
    assert followed["readyState"] == 2
