"""Queue-based streaming on Redis only: resume on another process, a Redis crash, shutdown.

Processes run ``uvicorn tests.apps.deploy:app`` with ``STREAMING_MODE=redis`` so they fail
loudly instead of falling back to memory; every server shares the session redis-server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, init_streaming
from streaming_mw._redis import CLIENT_NAME
from streaming_mw.runtime import StreamingContainer
from tests.apps.deploy import build_app
from tests.test_queue_streaming import (
    check_run,
    cursor_of,
    deploy,
    expected_events,
    follow,
    read_all,
    resume_trials,
    start_deploy,
    typed,
)

if TYPE_CHECKING:
    import redis.asyncio

    from streaming_mw.sse import SSEEvent
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.uvicorn_server import StartUvicornProcess, StartUvicornThread

pytestmark = pytest.mark.redis

TERMINAL = {"complete", "error"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("STREAMING_MODE", raising=False)


# --- 3. resume on a second uvicorn process sharing the Redis -------------------------------


@pytest.mark.slow
async def test_resume_on_a_second_process_100_trials(
    uvicorn_process: StartUvicornProcess, redis_url: str
) -> None:
    env = {"REDIS_URL": redis_url, "STREAMING_MODE": "redis"}
    first, second = await asyncio.gather(
        asyncio.to_thread(uvicorn_process, "tests.apps.deploy:app", env),
        asyncio.to_thread(uvicorn_process, "tests.apps.deploy:app", env),
    )
    await resume_trials(first.base_url, second.base_url)
    assert first.is_running()
    assert second.is_running()


# --- 4. Redis killed and restarted empty under 20 live streams -----------------------------


class Run:
    """What one client of the crash test saw."""

    def __init__(self) -> None:
        self.events: list[SSEEvent] = []
        self.eof = False


async def watch(base_url: str, config: dict[str, Any], run: Run, bound: float) -> None:
    """Read one stream until a terminal event or EOF; fail if that takes over ``bound``."""
    async with asyncio.timeout(bound), deploy(base_url, "async", config) as client:
        assert client.status == 200
        while not run.events or run.events[-1].event not in TERMINAL:
            try:
                run.events.append(await client.next_event(timeout=bound))
            except EOFError:
                run.eof = True
                return


def check_segments(run: Run, expected: list[tuple[str, dict[str, Any]]]) -> None:
    """Each incarnation (split at ``reset``) has one epoch, is numbered 1..n and is a
    contiguous slice of the worker's output: without a reset the whole output (nothing lost);
    with one, the first a prefix and the last a suffix (a slice if the body just ended)."""
    segments: list[list[SSEEvent]] = [[]]
    for event in run.events:
        if event.event == "reset":
            assert json.loads(event.data)["reason"] in {"epoch_changed", "expired", "unknown"}
            segments.append([])
        else:
            segments[-1].append(event)
    assert all(segments), "a reset must be followed by events"
    for segment in segments:
        assert len({cursor_of(e)[0] for e in segment}) == 1, "one epoch per incarnation"
        assert [cursor_of(e)[1] for e in segment] == list(range(1, len(segment) + 1))
    first, last = typed(segments[0]), typed(segments[-1])
    if len(segments) == 1 and not run.eof:
        assert first == expected, "no reset, so nothing may be missing"
    assert first == expected[: len(first)], "events lost without a reset"
    if run.eof:
        assert any(expected[i : i + len(last)] == last for i in range(len(expected)))
    else:
        assert last == expected[-len(last) :]


def problem(run: Run, expected: list[tuple[str, dict[str, Any]]]) -> str | None:
    try:
        check_segments(run, expected)
    except AssertionError as exc:
        got = [e for e in run.events if e.event != "reset"]
        pairs = enumerate(zip(typed(got), expected, strict=False))
        at = next((i for i, (seen, emitted) in pairs if seen != emitted), None)
        where = "" if at is None else f"; #{at} is {got[at].id} {typed(got)[at]}"
        where += "" if at is None else f" instead of {expected[at]}"
        resets = len(run.events) - len(got)
        summary = f"{len(got)} events and {resets} resets for {len(expected)} emitted"
        return f"{str(exc).splitlines()[0]}: {summary}{where}"
    return None


@pytest.mark.slow
async def test_redis_crash_under_20_live_streams(
    uvicorn_thread: StartUvicornThread, redis_server: RedisServer, clean_env: None
) -> None:
    base_url, _ = start_deploy(uvicorn_thread, redis_server.url)
    config = {"steps": 60, "delay": 0.05}  # an event every ~25 ms, for ~3 s
    runs = [Run() for _ in range(20)]
    tasks = [asyncio.create_task(watch(base_url, config, run, bound=30.0)) for run in runs]
    try:
        async with asyncio.timeout(10):  # every stream is live and flowing
            while min(len(run.events) for run in runs) < 10:
                await asyncio.wait(tasks, timeout=0.02, return_when=asyncio.FIRST_EXCEPTION)
                for task in tasks:
                    if task.done():
                        task.result()
        assert not any(task.done() for task in tasks)
        redis_server.kill()
        redis_server.start()  # same port, empty
        await asyncio.gather(*tasks)  # bounded by `watch`: no stream hangs
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    fresh = {"steps": 3, "delay": 0.02}  # the fan-out reader recovered unaided
    async with deploy(base_url, "async", fresh) as client:
        stream_id, events = client.headers["x-stream-id"], await read_all(client)
    check_run(events, expected_events(fresh))
    async with follow(base_url, stream_id, events[1].id) as again:
        assert await read_all(again) == events[2:]

    for run in runs:
        assert run.events, "every stream delivered something"
        assert run.eof or run.events[-1].event in TERMINAL
    problems = [p for run in runs if (p := problem(run, expected_events(config)))]
    assert not problems, f"{len(problems)}/20 streams:\n" + "\n".join(problems)


# --- shutdown while a worker still runs ----------------------------------------------------


async def test_shutdown_with_a_running_worker_leaks_no_connection(
    uvicorn_thread: StartUvicornThread, redis_url: str, clean_env: None
) -> None:
    container = StreamingContainer()
    init_streaming(redis_url, channel_config=ChannelConfig(), mode="redis", container=container)
    server = uvicorn_thread(build_app(container))
    config = {"steps": 200, "delay": 0.05}  # still running when the server stops
    async with deploy(server.base_url, "async", config) as client:
        head = [await client.next_event() for _ in range(3)]
        client.abort()  # the worker keeps running (no `cancel`)
    check_run(head, expected_events(config)[:3])
    # Recorded rather than raised: raised inside uvloop's close they hang the server thread.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        stopped = time.monotonic() - started
        gc.collect()
    assert stopped < 8.0
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], "the server left connections open at shutdown"


# --- a burst of followers: bounded Redis connections, no 503 -------------------------------


async def test_a_burst_of_300_followers_is_served_on_at_most_3_redis_connections(
    uvicorn_thread: StartUvicornThread, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    """Before the pool was bounded, 300 simultaneous follows opened a connection each until
    redis-py's cap of 100, and the rest were answered 503."""
    before = {c["id"] for c in await redis_client.client_list() if c["name"] == CLIENT_NAME}
    base_url, _ = start_deploy(uvicorn_thread, redis_url)
    async with deploy(base_url, "async", {"steps": 400, "delay": 0.05}) as producer:
        stream_id = producer.headers["x-stream-id"]
        await producer.next_event()

        async def one_follower() -> int:
            async with follow(base_url, stream_id, timeout=30.0) as client:
                if client.status == 200:
                    assert (await client.next_event()).event in {"log", "progress"}
                return client.status

        statuses = await asyncio.gather(*(one_follower() for _ in range(300)))
        assert statuses == [200] * 300
        clients = await redis_client.client_list()
        ours = [c for c in clients if c["name"] == CLIENT_NAME and c["id"] not in before]
        assert 1 <= len(ours) <= 3, ours  # this server's, not those of earlier tests
