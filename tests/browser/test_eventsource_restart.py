"""Native ``EventSource`` in Chromium, Redis mode: the process serving the followed stream is
restarted mid-stream; the browser reconnects by itself with ``Last-Event-ID`` and the page ends
with every event exactly once, then stops on the ``204`` that answers its terminal cursor.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.helpers.browser import javascript_errors, wait_for
from tests.helpers.uvicorn_server import UvicornProcess

if TYPE_CHECKING:
    from pathlib import Path

    from tests.browser.conftest import Page
    from tests.helpers.uvicorn_server import StartUvicornProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]

COUNT = 40


def _events(page: Page) -> list[str]:
    return [e.text for e in page.driver.find_elements(By.CSS_SELECTOR, "#events li")]


def test_eventsource_resumes_across_a_server_restart(
    page: Page, uvicorn_process: StartUvicornProcess, redis_url: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url, "STREAMING_MODE": "redis"}
    publisher = uvicorn_process("tests.apps.drain:app", env)
    server = uvicorn_process("tests.apps.follow_page:app", env)
    with httpx.Client(timeout=10) as client:  # the worker goes on after the client leaves
        url = f"{publisher.base_url}/deploy?count={COUNT}&delay=0.1"
        with client.stream("POST", url) as response:
            stream_id = response.headers["x-stream-id"]
    page.driver.get(f"{server.base_url}/page?stream={stream_id}")
    wait_for(lambda: len(_events(page)) >= 5, 15, "the first events arrive")
    started = time.monotonic()
    server.terminate()  # the drain ends the stream with a retry: hint
    again = UvicornProcess(
        "tests.apps.follow_page:app", env, port=server.port, log_path=tmp_path / "again.log"
    )
    try:
        again.start()
        print(f"restarted in {time.monotonic() - started:.1f}s")
        wait_for(lambda: any(" complete " in e for e in _events(page)), 30, "complete arrives")
        ready = page.driver.find_element(By.ID, "ready")
        wait_for(lambda: ready.text == "2", 10, "the EventSource stops (204)")
        log = again.log_text()
    finally:
        again.stop()
    events = _events(page)
    ids = [e.split(" ", 1)[0] for e in events]
    types = [e.split(" ", 2)[1] for e in events]
    assert types == ["log"] * COUNT + ["complete"], events
    assert [json.loads(e.split(" ", 2)[2])["index"] for e in events[:COUNT]] == list(range(COUNT))
    assert len(set(ids)) == len(ids), events
    resumed = [line for line in log.splitlines() if line.startswith(f"follow {stream_id}")]
    assert resumed, log
    assert "last-event-id=None" not in resumed[0], resumed  # the browser sent its cursor
    assert resumed[-1].endswith(f"last-event-id={ids[-1]}"), resumed  # answered 204
    assert int(page.driver.find_element(By.ID, "opens").text) >= 2
    network = [e for e in page.console() if e.get("source") == "network"]
    print(f"network entries while the server restarted: {network}")
    assert not javascript_errors(page.entries), page.entries
