"""`WriteWatchdog`: a stream whose send has been pending past its deadline is cut, others not.

End to end (a real client that stops reading, behind uvicorn): tests/chaos/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from streaming_mw.config import ChannelConfig
from streaming_mw.errors import ConfigurationError
from streaming_mw.web.deadline import WriteWatchdog, check_interval


class Stream:
    def __init__(self, since: float = 0.0) -> None:
        self.sending_since = since
        self.cut = 0
        self.ended = asyncio.Event()

    def describe(self) -> str:
        return "s"

    def cut_for_write_timeout(self) -> None:
        self.cut += 1
        self.ended.set()


async def test_only_a_send_pending_past_its_deadline_is_cut_once() -> None:
    watchdog = WriteWatchdog()
    idle, late, recent = Stream(), Stream(since=100.0), Stream(since=108.0)
    for stream in (idle, late, recent):
        watchdog.watch(stream, 5.0)
    assert watchdog.check(now=110.0) == 1
    assert watchdog.check(now=110.5) == 0  # forgotten once cut
    assert (idle.cut, late.cut, recent.cut) == (0, 1, 0)
    assert watchdog.cuts == 1
    assert watchdog.longest_spared == 0.0  # counted once a stream ends on its own
    assert set(watchdog.watched) == {idle, recent}
    for stream in (idle, recent):
        watchdog.forget(stream)
    assert watchdog.longest_spared == pytest.approx(2.5)  # `recent`, at the second check
    await asyncio.sleep(check_interval(5.0) + 0.1)  # the task ends with the last stream


async def test_no_deadline_watches_nothing() -> None:
    watchdog = WriteWatchdog()
    watchdog.watch(Stream(since=1.0), None)
    assert not watchdog.watched


async def test_the_watchdog_task_cuts_on_its_own() -> None:
    watchdog = WriteWatchdog()
    stuck = Stream()
    watchdog.watch(stuck, 0.2)
    stuck.sending_since = asyncio.get_running_loop().time()  # the same clock: monotonic
    await asyncio.wait_for(stuck.ended.wait(), 5)
    assert not watchdog.watched


def test_check_interval_is_a_quarter_of_the_deadline_within_bounds() -> None:
    assert check_interval(30.0) == 1.0
    assert check_interval(2.0) == 0.5
    assert check_interval(0.01) == 0.05


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "30"])
def test_a_bad_write_timeout_is_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError, match="write_timeout"):
        ChannelConfig(write_timeout=value)  # type: ignore[arg-type]


def test_a_watchdog_whose_loop_closed_is_dropped_without_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An app served without a lifespan (or a test's own loop) may close its loop with streams
    # still watched: the sleeping check is dropped, and asyncio logs no "Task was destroyed".
    watchdog = WriteWatchdog()

    async def watch() -> None:
        watchdog.watch(Stream(), 30.0)
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(watch())
    loop.close()
    with caplog.at_level("ERROR", logger="asyncio"):
        watchdog._task = None
        gc.collect()
    assert "Task was destroyed" not in caplog.text
