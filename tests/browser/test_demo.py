"""The demo page in headless Chromium, as a user uses it: chat answers token by token and the
``429`` of a fourth concurrent answer, a deployment to 100 %, and a dropped connection resumed
with every log line exactly once. No JavaScript error on the way.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest
from selenium.webdriver.common.by import By

from tests.helpers.browser import javascript_errors, wait_for

if TYPE_CHECKING:
    from tests.browser.conftest import Page
    from tests.helpers.uvicorn_server import StartUvicornProcess, UvicornProcess

pytestmark = pytest.mark.slow

LOG_LINES = 1 + 8 * 3  # "Starting deployment" and three lines per step (examples/demo/deploy.py)


@pytest.fixture
def demo(uvicorn_process: StartUvicornProcess) -> UvicornProcess:
    return uvicorn_process("examples.demo.app:app", {"STREAMING_MODE": "memory"})


def _open(page: Page, demo: UvicornProcess) -> None:
    page.driver.get(f"{demo.base_url}/")
    wait_for(lambda: page.driver.find_element(By.ID, "chat-form"), 10, "the demo page loads")


def _answers(page: Page) -> list[tuple[str, str, str]]:
    panels = page.driver.find_elements(By.CSS_SELECTOR, "#answers .answer")
    return [
        (
            p.get_attribute("class") or "",
            p.find_element(By.CLASS_NAME, "meta").text,
            p.find_element(By.TAG_NAME, "span").text,
        )
        for p in panels
    ]


def test_chat_streams_token_by_token_and_the_fourth_answer_shows_429(
    page: Page, demo: UvicornProcess
) -> None:
    _open(page, demo)
    ask = page.driver.find_element(By.CSS_SELECTOR, "#chat-form button")
    for _ in range(4):
        ask.click()
    refused = wait_for(
        lambda: [a for a in _answers(page) if "refused" in a[0]], 10, "one answer is refused"
    )
    assert len(refused) == 1
    assert "HTTP 429" in refused[0][1], refused
    assert "already has 3 streams open" in refused[0][1]
    # While the three others stream, their text grows in the DOM, token by token.
    sizes = []
    for _ in range(4):
        streaming = [a for a in _answers(page) if "streaming" in a[1]]
        sizes.append(sum(len(a[2]) for a in streaming))
        time.sleep(0.3)
    assert sizes == sorted(sizes), sizes
    assert sizes[-1] > sizes[0] > 0, sizes

    def completed() -> int:
        return sum("complete" in a[1] for a in _answers(page))

    wait_for(lambda: completed() == 3, 30, "three answers complete")
    assert not javascript_errors(page.console()), page.entries


def _log(page: Page) -> list[str]:
    return [e.text for e in page.driver.find_elements(By.CSS_SELECTOR, "#log div")]


def _status(page: Page) -> str:
    return page.driver.find_element(By.ID, "deploy-status").text


def _assert_every_line_once(lines: list[str]) -> None:
    ids = [m.group(1) for line in lines if (m := re.match(r"(\S+-\d+)  \S", line))]
    logged = [i for i, line in zip(ids, lines, strict=False) if "complete" not in line]
    assert not [line for line in lines if line.startswith("duplicate")], lines
    assert len(set(ids)) == len(ids), lines
    seqs = [int(i.rpartition("-")[2]) for i in ids]
    assert seqs == sorted(seqs), lines
    assert len(logged) >= LOG_LINES, lines


def test_deploy_reaches_100_percent_and_success(page: Page, demo: UvicornProcess) -> None:
    _open(page, demo)
    page.driver.find_element(By.CSS_SELECTOR, "#deploy-form button[type=submit]").click()
    wait_for(lambda: _status(page).startswith("complete:"), 30, "the deployment completes")
    assert page.driver.find_element(By.ID, "progress").get_attribute("value") == "100"
    lines = _log(page)
    _assert_every_line_once(lines)
    assert sum("[switch] line 3 of 3" in line for line in lines) == 1
    assert not javascript_errors(page.console()), page.entries


def test_drop_connection_then_resume_shows_every_line_once(
    page: Page, demo: UvicornProcess
) -> None:
    _open(page, demo)
    page.driver.find_element(By.CSS_SELECTOR, "#deploy-form button[type=submit]").click()
    wait_for(lambda: len(_log(page)) >= 6, 15, "a few log lines before the drop")
    page.driver.find_element(By.ID, "drop").click()
    wait_for(lambda: "connection dropped" in _log(page), 5, "the page sees the drop")
    wait_for(lambda: _status(page).startswith("complete:"), 30, "the resumed deployment completes")
    lines = _log(page)
    assert any(line.startswith("reconnecting after ") for line in lines), lines
    _assert_every_line_once(lines)
    assert not javascript_errors(page.console()), page.entries
