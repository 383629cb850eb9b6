"""The startup heap is frozen out of full collections once the container has started
(`streaming_mw.runtime.heap`). Each case runs in a fresh interpreter: freezing is once per
process, and this test process froze its own heap when its first container started."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    from streaming_mw import ChannelConfig, init_streaming
    from streaming_mw.runtime import get_container
    from streaming_mw.runtime.startup import start_container, stop_container

    if sys.argv[2] == "disabled":
        gc.disable()

    async def main():
        if sys.argv[1] == "on":
            init_streaming(mode="memory", channel_config=ChannelConfig(freeze_startup_heap=True))
        else:
            init_streaming(mode="memory")
        container = get_container()
        before = gc.get_freeze_count()
        await start_container(container)
        first = gc.get_freeze_count()
        await stop_container(container)
        leftover = [[] for _ in range(5000)]  # tracked, built after: they stay young
        await start_container(container)
        second = gc.get_freeze_count()
        await stop_container(container)
        print(json.dumps({"before": before, "first": first, "second": second,
                          "leftover": len(leftover)}))

    asyncio.run(main())
    """
)


def run(freeze: str, collector: str = "enabled") -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, freeze, collector],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_first_start_freezes_what_is_alive_and_a_second_start_adds_nothing() -> None:
    counts = run("on")
    assert counts["before"] == 0
    assert counts["first"] > 10_000  # the imported framework, the app, the container
    # once per process: the 5,000 lists built after the first start were not frozen (the count
    # itself may move by a few dozen between the two starts)
    assert abs(counts["second"] - counts["first"]) < 1_000


def test_freeze_startup_heap_is_off_by_default() -> None:
    counts = run("default")
    assert counts["first"] == counts["second"] == 0


def test_an_app_that_turned_the_collector_off_is_left_alone() -> None:
    counts = run("on", "disabled")
    assert counts["first"] == counts["second"] == 0
