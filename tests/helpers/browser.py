"""Headless Chromium driven through Selenium and the system ``chromedriver``.

Selenium talks to the ``chromedriver`` of the same Debian build as ``chromium`` (the versions
always match, nothing is downloaded); the browser's console is read through the driver's
``browser`` log. ``scripts/test`` installs both (``apt-get install chromium chromium-driver``);
where neither can be found the browser tests are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from selenium.webdriver.chrome.webdriver import WebDriver

ARTIFACTS = Path(
    os.environ.get("STREAMING_MW_TEST_ARTIFACTS")
    or Path(__file__).resolve().parents[2] / ".test-artifacts"
)
"""Where a failed browser test leaves its screenshot and console (next to the test log)."""


_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def start_chromium() -> WebDriver:
    """A headless Chromium that records its console, or skip saying what is missing."""
    browser, driver = _which(_BROWSERS), _which(_DRIVERS)
    if browser is None or driver is None:
        pytest.skip("no chromium / chromedriver on PATH: scripts/test installs them (apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def console(driver: WebDriver) -> list[dict[str, Any]]:
    """The console entries since the last call (``level``, ``source``, ``message``)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def javascript_errors(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors of the page's code: uncaught exceptions and ``console.error``. A failed request
    (``source: network``: a 429 the page expects, a reconnect while a server restarts) is the
    network's, and is checked by each test where it matters."""
    return [e for e in entries if e.get("level") == "SEVERE" and e.get("source") != "network"]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> Any:
    """Poll ``condition`` every 50 ms until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def save_failure(driver: WebDriver, name: str, entries: list[dict[str, Any]]) -> Path:
    """Write the page's screenshot and console under `ARTIFACTS`; return the screenshot."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    shot = ARTIFACTS / f"{safe}.png"
    driver.save_screenshot(str(shot))
    lines = [f"{e.get('level')} {e.get('source')} {e.get('message')}" for e in entries]
    (ARTIFACTS / f"{safe}.console.txt").write_text("\n".join(lines) + "\n")
    return shot
