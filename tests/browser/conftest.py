"""A headless Chromium per test; on failure, its screenshot and console are kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.browser import console, save_failure, start_chromium

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from selenium.webdriver.chrome.webdriver import WebDriver


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


class Page:
    """The browser and every console entry it logged during the test."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.entries: list[dict[str, Any]] = []

    def console(self) -> list[dict[str, Any]]:
        """Every console entry so far."""
        self.entries.extend(console(self.driver))
        return self.entries


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    driver = start_chromium()
    page = Page(driver)
    try:
        yield page
        if request.node.stash.get(_FAILED, False):
            shot = save_failure(driver, request.node.name, page.console())
            print(f"screenshot of the final state: {shot}")
    finally:
        driver.quit()
