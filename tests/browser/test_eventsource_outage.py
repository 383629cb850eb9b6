"""Native ``EventSource`` in Chromium and a Redis outage (Redis mode), whether the page opens
during it or its connection drops mid-stream while Redis is down: each follow is answered
``200`` with only ``retry:``, the browser comes back by itself, and once Redis is back the page
shows every event exactly once, then stops on the ``204`` after ``complete``. A ``503`` made the
browser give up for good.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.helpers.browser import javascript_errors, wait_for
from tests.helpers.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from tests.browser.conftest import Page
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.uvicorn_server import StartUvicornProcess

pytestmark = pytest.mark.slow

COUNT = 20
OUTAGE = 5.0


def _events(page: Page) -> list[str]:
    return [e.text for e in page.driver.find_elements(By.CSS_SELECTOR, "#events li")]


def test_eventsource_opened_during_a_redis_outage_ends_with_every_event(
    page: Page, uvicorn_process: StartUvicornProcess, own_redis: RedisServer
) -> None:
    env = {"REDIS_URL": own_redis.url, "STREAMING_MODE": "redis"}
    server = uvicorn_process("tests.apps.follow_page:app", env)
    publisher = uvicorn_process("tests.apps.drain:app", env)
    with httpx.Client(timeout=10) as client:
        done = client.post(f"{publisher.base_url}/deploy?count={COUNT}&delay=0.005")
    assert "event: complete" in done.text
    stream_id = done.headers["x-stream-id"]
    own_redis.stop()
    started = time.monotonic()
    try:
        page.driver.get(f"{server.base_url}/page?stream={stream_id}")
        ready = page.driver.find_element(By.ID, "ready")
        time.sleep(OUTAGE)
        assert ready.text != "2", "the EventSource gave up during the outage"
        assert not _events(page)
    finally:
        own_redis.start()
    wait_for(lambda: ready.text == "2", 20, "every event, then the 204 that stops it")
    print(f"ended {time.monotonic() - started:.1f}s after the outage began")
    events = _events(page)
    types = [e.split(" ", 2)[1] for e in events]
    assert types == ["log"] * COUNT + ["complete"], events
    assert len({e.split(" ", 1)[0] for e in events}) == len(events)
    assert not javascript_errors(page.console()), page.entries
    assert not [e for e in page.entries if "503" in str(e.get("message"))], page.entries


def test_eventsource_cut_during_a_redis_outage_resumes_every_event_once(
    page: Page, uvicorn_process: StartUvicornProcess, own_redis: RedisServer
) -> None:
    """The connection drops mid-stream (about event 80 of 300) while Redis is down for 5 s:
    the browser's own reconnects are answered ``retry:`` until Redis is back, then it resumes
    from its ``Last-Event-ID``; no page code recreates the ``EventSource``."""
    env = {"REDIS_URL": own_redis.url, "STREAMING_MODE": "redis"}
    server = uvicorn_process("tests.apps.follow_page:app", env)
    publisher = uvicorn_process("tests.apps.drain:app", env)
    count = 300
    with httpx.Client(timeout=10) as client:  # the worker goes on after the client leaves
        url = f"{publisher.base_url}/deploy?count={count}&delay=0.02"
        with client.stream("POST", url) as response:
            stream_id = response.headers["x-stream-id"]
    with TcpProxy(server.port) as proxy:
        page.driver.get(f"{proxy.base_url}/page?stream={stream_id}")
        wait_for(lambda: len(_events(page)) >= 80, 15, "80 events before the cut")
        own_redis.stop()
        try:
            proxy.cut()
            time.sleep(OUTAGE)
            ready = page.driver.find_element(By.ID, "ready")
            assert ready.text != "2", "the EventSource gave up during the outage"
        finally:
            own_redis.start()
        wait_for(lambda: ready.text == "2", 30, "every event, then the 204 that stops it")
    events = _events(page)
    types = [e.split(" ", 2)[1] for e in events]
    assert types == ["log"] * count + ["complete"], events[-3:]
    assert len({e.split(" ", 1)[0] for e in events}) == len(events)
    assert not javascript_errors(page.console()), page.entries
