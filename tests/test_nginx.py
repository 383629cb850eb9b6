"""Behind a real nginx with the settings docs/deploying.md recommends: events arrive as they
are published (also through a location left at nginx's defaults), a client drop releases the
lease, and ``X-Accel-Buffering: no`` is sent by default.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import pytest

from streaming_mw.sse import SSEEvent, SSEParser
from tests.helpers.nginx import Nginx

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def upstream(uvicorn_process: StartUvicornProcess, redis_url: str) -> UvicornProcess:
    return uvicorn_process(
        "tests.apps.matrix:app", {"REDIS_URL": redis_url, "STREAMING_MODE": "redis"}
    )


@pytest.fixture
def nginx(upstream: UvicornProcess, tmp_path: Path) -> Iterator[Nginx]:
    proxy = Nginx(tmp_path, upstream.port)
    proxy.start()
    yield proxy
    proxy.stop()
    print(f"--- nginx ---\n{proxy.log_text()}")


def _first_event_then_rest(url: str) -> tuple[float, float, list[SSEEvent]]:
    """Seconds to the first event, seconds to the end, and every event of ``url``."""
    parser, events, first = SSEParser(), [], None
    started = time.monotonic()
    with httpx.Client(timeout=10) as client, client.stream("POST", url) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            events += [item for item in parser.feed(chunk) if isinstance(item, SSEEvent)]
            if events and first is None:
                first = time.monotonic() - started
    assert first is not None
    return first, time.monotonic() - started, events


@pytest.mark.parametrize("path", ["", "/default"], ids=["recommended", "buffering-on"])
def test_events_arrive_as_they_are_published(nginx: Nginx, path: str) -> None:
    first, total, events = _first_event_then_rest(
        f"{nginx.base_url}{path}/deploy?count=8&delay=0.4"
    )
    print(f"first event after {first:.3f}s, the last after {total:.3f}s")
    assert [e.event for e in events] == ["log"] * 8 + ["complete"]
    assert total > 2.5  # eight events 0.4 s apart
    assert first < total - 2  # not held back until the stream ended


def test_x_accel_buffering_is_sent_by_default(upstream: UvicornProcess) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{upstream.base_url}/deploy?count=1&delay=0")
    assert response.headers["x-accel-buffering"] == "no"


@pytest.mark.parametrize("delay", [0.05, 30.0], ids=["writing", "silent"])
def test_a_client_drop_releases_the_lease(nginx: Nginx, delay: float) -> None:
    user = f"nginx-{delay:g}"

    def active() -> int:
        count: int = httpx.get(f"{nginx.base_url}/leases/{user}").json()["active"]
        return count

    client = httpx.Client(timeout=10)
    url = f"{nginx.base_url}/direct?user={user}&delay={delay}"
    with client.stream("GET", url) as response:
        chunks = response.iter_bytes()
        assert next(chunks)
        assert active() == 1
        dropped = time.monotonic()
    client.close()
    while active():
        assert time.monotonic() - dropped < 10, "the lease was not released within 10 s"
        time.sleep(0.01)
    elapsed = time.monotonic() - dropped
    kind = "silent" if delay > 1 else "writing"
    print(f"through nginx ({kind}): lease released {elapsed:.3f}s after the drop")
    assert elapsed < 2
