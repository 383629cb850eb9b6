"""`streaming_mw.testing`: reading events from httpx responses (async and sync), running an
app with its lifespan in memory mode, a real server for endless streams, and the pytest plugin
registered through the ``pytest11`` entry point."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from streaming_mw.runtime import StreamingContainer
from streaming_mw.testing import (
    aiter_events,
    aread_events,
    data_of,
    read_events,
    serve_in_thread,
    streaming_client,
)
from tests.apps.deploy import build_app

if TYPE_CHECKING:
    from streaming_mw.runtime.container import Runtime

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parents[1]
STEPS = {"steps": 3}
EXPECTED = ["log", "progress", "log", "progress", "log", "progress", "log", "complete"]


@pytest.fixture
def container(clean_env: None) -> StreamingContainer:
    return StreamingContainer()


async def test_streaming_client_runs_the_lifespan_in_memory_mode(
    container: StreamingContainer,
) -> None:
    runtime: Runtime = container.runtime()
    async with streaming_client(build_app(container), container=container) as client:
        assert runtime.backend == "memory"
        assert runtime.fallback_reason is None  # memory asked for: no fallback warning
        async with client.stream("POST", "/deploy/async", json=STEPS) as response:
            assert response.status_code == 200
            events = await aread_events(response)
    assert not runtime.started  # the lifespan's shutdown stopped the container
    assert [e.event for e in events] == EXPECTED
    assert data_of(events[-1]) == {"success": True, "deployment_id": "abc123"}
    assert all(e.id for e in events)  # cursors, for Last-Event-ID


async def test_resume_with_last_event_id_through_the_client(
    container: StreamingContainer,
) -> None:
    async with streaming_client(build_app(container), container=container) as client:
        async with client.stream("POST", "/deploy/sync", json=STEPS) as response:
            stream_id = response.headers["x-stream-id"]
            first = await aread_events(response)
        headers = {"Last-Event-ID": first[4].id or ""}
        async with client.stream("GET", f"/streams/{stream_id}", headers=headers) as response:
            rest = [event async for event in aiter_events(response)]
    assert rest == first[5:]


def test_read_events_from_a_sync_client(container: StreamingContainer) -> None:
    with (
        serve_in_thread(build_app(container)) as base_url,
        httpx.Client(base_url=base_url, timeout=10) as client,
        client.stream("POST", "/deploy/sync", json=STEPS) as response,
    ):
        events = read_events(response)
    assert [e.event for e in events] == EXPECTED


async def test_a_response_that_is_not_an_event_stream_fails_clearly(
    container: StreamingContainer,
) -> None:
    async with (
        streaming_client(build_app(container), container=container) as client,
        client.stream("GET", "/ping") as response,
    ):
        with pytest.raises(AssertionError, match="expected a text/event-stream response"):
            await aread_events(response)


async def test_serve_in_thread_reads_the_start_of_an_endless_stream(
    container: StreamingContainer,
) -> None:
    config = {"steps": 100_000, "delay": 0.01, "cancel": True}
    with serve_in_thread(build_app(container)) as base_url:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10) as client,
            client.stream("POST", "/deploy/async", json=config) as response,
        ):
            seen = []
            async for event in aiter_events(response):
                seen.append(event.event)
                if len(seen) == 3:
                    break  # the stream goes on; leaving closes the connection
    assert seen == ["log", "progress", "log"]


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert {p.name: p.value for p in points}["streaming_mw"] == "streaming_mw.testing.plugin"


PLUGIN_TEST = """
import pytest
from tests.apps.deploy import build_app
from streaming_mw.testing import aread_events

@pytest.fixture
def streaming_app():
    return build_app()

@pytest.mark.asyncio
async def test_deploy(streaming_client):
    async with streaming_client.stream("POST", "/deploy/async", json={"steps": 2}) as r:
        events = await aread_events(r)
    assert [e.event for e in events][-1] == "complete"

def test_server(streaming_server):
    assert streaming_server.startswith("http://127.0.0.1:")
"""


def test_the_plugin_fixtures_work_in_a_users_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for tests.apps.deploy
    pytester.makepyfile(test_user=PLUGIN_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=120)
    result.assert_outcomes(passed=2)


def test_the_plugin_says_what_is_missing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(streaming_server):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=120)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a `streaming_app` fixture*"])
