"""Live streams across processes: each container's `LiveStreamHeartbeat` writes its registry to
Redis with a TTL, and ``streaming-mw streams list`` shows the streams of every process."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import redis

from streaming_mw._redis import make_client
from streaming_mw.cli import main
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.runtime import StreamingContainer, StreamRegistry, init_streaming
from streaming_mw.runtime.container import Runtime
from streaming_mw.runtime.heartbeat import LiveStreamHeartbeat, heartbeat_pattern
from streaming_mw.runtime.startup import start_container, stop_container
from streaming_mw.testing import aiter_events, serve_in_thread
from tests.apps.deploy import build_app

pytestmark = pytest.mark.redis


@pytest.fixture
def url(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    monkeypatch.setenv("REDIS_URL", redis_url)
    return redis_url


def test_registry_counts_events_and_names_the_stream() -> None:
    registry = StreamRegistry()
    key = registry.open("/streams/s1", "s1")
    registry.note_events(key, 2)
    [stream] = registry.streams()
    assert (stream.stream_id, stream.events) == ("s1", 2)
    assert stream.last_event_at is not None
    registry.close(key)
    registry.note_events(key, 1)  # after close: ignored
    assert registry.streams() == []


async def test_streams_list_shows_the_streams_of_two_processes(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two web processes' heartbeats (two runtimes, two registries), each with live streams."""
    beats = []
    for name, streams in (("a", ["s-a1", "s-a2"]), ("b", ["s-b1"])):
        runtime = Runtime()
        runtime.redis = make_client(QueueRedisConfig(url))
        registry = StreamRegistry()
        for stream_id in streams:
            key = registry.open(f"/streams/{stream_id}", stream_id)
            registry.add_lease(key, f"user-{name}", "lease")
            registry.note_events(key, 3)
        beats.append(LiveStreamHeartbeat(runtime, registry, ChannelConfig()))
    try:
        for beat in beats:
            assert await beat.beat()
        assert beats[0]._runtime.redis is not None
        assert 0 < await beats[0]._runtime.redis.pttl(beats[0].key) <= 15_000
        # the CLI runs its own event loop: in a thread
        assert await asyncio.to_thread(main, ["streams", "list", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert sorted((r["process"], r["stream_id"]) for r in rows) == sorted(
            [(beats[0].process, "s-a1"), (beats[0].process, "s-a2"), (beats[1].process, "s-b1")]
        )
        assert {r["user_id"] for r in rows} == {"user-a", "user-b"}
        assert {r["events"] for r in rows} == {3}
        assert await asyncio.to_thread(main, ["streams", "list"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == [
            "STREAM",
            "PATH",
            "OWNER",
            "PROCESS",
            "AGE",
            "EVENTS",
            "LAST",
            "EVENT",
        ]
        assert len(out) == 4
        for beat in beats:
            await beat.stop()  # deletes the record
            assert not await beat._runtime.redis.exists(beat.key)  # type: ignore[union-attr]
    finally:
        for beat in beats:
            await beat.stop()
            assert beat._runtime.redis is not None
            await beat._runtime.redis.aclose()


async def test_the_container_starts_and_stops_its_heartbeat(url: str) -> None:
    container = StreamingContainer()
    init_streaming(url, mode="redis", container=container)
    await start_container(container)
    heartbeat: LiveStreamHeartbeat = container.stream_heartbeat()
    client = make_client(QueueRedisConfig(url))
    try:
        pattern = heartbeat_pattern(ChannelConfig().key_prefix)
        for _ in range(100):  # the first beat runs as the container starts
            if [k async for k in client.scan_iter(match=pattern)]:
                break
            await asyncio.sleep(0.05)
        assert await client.exists(heartbeat.key)
        await stop_container(container)
        assert not await client.exists(heartbeat.key)
    finally:
        await stop_container(container)
        await client.aclose()


async def test_memory_mode_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    container = StreamingContainer()
    init_streaming(mode="memory", container=container)
    await start_container(container)
    try:
        heartbeat: LiveStreamHeartbeat = container.stream_heartbeat()
        assert await heartbeat.beat() is False
    finally:
        await stop_container(container)


async def test_the_registry_sees_a_live_streams_id_and_events(clean_env: None) -> None:
    container = StreamingContainer()
    registry: StreamRegistry = container.stream_registry()
    config = {"steps": 100_000, "delay": 0.01, "cancel": True}
    with serve_in_thread(build_app(container)) as base_url:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10) as client,
            client.stream("POST", "/deploy/async", json=config) as response,
        ):
            seen = 0
            async for _ in aiter_events(response):
                seen += 1
                if seen == 3:
                    break
            [stream] = registry.streams()
            assert stream.stream_id == response.headers["x-stream-id"]
            assert stream.path == "/deploy/async"
            assert stream.events >= 3
            assert stream.last_event_at is not None
