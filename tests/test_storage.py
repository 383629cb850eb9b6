"""Event storage: every event of a stream is stored in order, and storage never gets in the way
of delivery (a blocking or failing store only costs dropped, counted writes)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, StreamEvent, init_streaming
from streaming_mw.runtime import StreamingContainer, init_event_storage
from streaming_mw.runtime.startup import start_container, stop_container
from streaming_mw.scope import current_stream
from streaming_mw.storage import MemoryEventStorage, StorageWriter, StreamLogHandler
from tests.apps.deploy import build_app
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.helpers.uvicorn_server import StartUvicornThread


def events_at(*stamps: float, stream: str = "s") -> list[StreamEvent]:
    return [
        StreamEvent("log", {"n": i}, f"e-{i + 1}", stream, stamp) for i, stamp in enumerate(stamps)
    ]


async def test_memory_storage_orders_queries_and_counts() -> None:
    storage = MemoryEventStorage()
    await storage.append(events_at(30.0, 10.0, stream="a")[::-1])
    await storage.append([StreamEvent("progress", {"percent": 5}, "e-3", "a", 20.0)])
    await storage.append(events_at(15.0, stream="b"))
    assert [e.id for e in await storage.get_events("a")] == ["e-1", "e-2", "e-3"]
    logs = await storage.query(start=10.0, end=30.0, types=["log"])
    assert [(e.stream_id, e.timestamp) for e in logs] == [("a", 10.0), ("b", 15.0)]
    assert await storage.count(stream_id="a") == 3
    assert await storage.count(types=["progress"]) == 1
    assert len(await storage.query(limit=2)) == 2


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> StreamingContainer:
    for name in ("REDIS_URL", "OPENSEARCH_HOST", "STREAMING_MODE"):
        monkeypatch.delenv(name, raising=False)
    container = StreamingContainer()
    init_streaming(
        mode="memory", channel_config=ChannelConfig(ping_interval=0.2), container=container
    )
    return container


async def deploy(base_url: str, config: dict[str, Any]) -> tuple[str, list[Any]]:
    async with SSEClient.connect(base_url, "/deploy/sync", method="POST", json=config) as client:
        stream_id = client.headers["x-stream-id"]
        return stream_id, [event async for event in client.events(timeout=10.0)]


async def test_every_event_of_a_deployment_is_stored_in_order(
    container: StreamingContainer, uvicorn_thread: StartUvicornThread
) -> None:
    init_event_storage(container=container)  # no host: the memory storage
    server = uvicorn_thread(build_app(container))
    stream_id, events = await deploy(server.base_url, {"steps": 5})
    writer, storage = container.storage_writer(), container.event_storage()
    assert writer is not None
    assert storage is not None
    await writer.flush()
    stored = await storage.get_events(stream_id)
    assert [(e.id, e.type) for e in stored] == [(e.id, e.event) for e in events]
    assert all(event.stream_id == stream_id for event in stored)


class BlockingStorage(MemoryEventStorage):
    """Never finishes a write."""

    async def append(self, events: Sequence[StreamEvent]) -> None:
        await asyncio.Event().wait()


class FailingStorage(MemoryEventStorage):
    async def append(self, events: Sequence[StreamEvent]) -> None:
        raise ConnectionError("storage down")


@pytest.mark.parametrize("storage_class", [BlockingStorage, FailingStorage])
async def test_a_stuck_or_failing_store_never_delays_delivery(
    storage_class: type[MemoryEventStorage], caplog: pytest.LogCaptureFixture
) -> None:
    writer = StorageWriter(
        storage_class(), capacity=50, batch_size=10, flush_interval=0.01, write_timeout=0.05
    )
    writer.start()
    try:
        for event in events_at(*range(500)):
            writer.offer(event)  # never waits, whatever the store does
        await asyncio.sleep(0.2)
    finally:
        with caplog.at_level(logging.WARNING, logger="streaming_mw.storage"):
            await writer.stop(deadline=0.3)
    assert writer.written == 0
    assert writer.dropped == 500
    assert "dropped 500 event(s)" in caplog.text


async def test_pending_writes_are_flushed_at_shutdown(container: StreamingContainer) -> None:
    storage = MemoryEventStorage()
    init_event_storage(container=container)
    await start_container(container)
    writer = container.storage_writer()
    assert writer is not None
    writer.storage = storage
    writer.flush_interval = 3600  # only the shutdown flush can write them
    for event in events_at(1.0, 2.0, 3.0):
        writer.offer(event)
    await stop_container(container)
    assert len(await storage.get_events("s")) == 3


async def test_log_records_are_shipped_with_stream_and_trace() -> None:
    storage = MemoryEventStorage()
    writer = StorageWriter(storage)
    logger = logging.getLogger("tests.storage.shipping")
    handler = StreamLogHandler(writer)
    logger.addHandler(handler)
    token = current_stream.set("stream-1")
    try:
        logger.warning("disk %d%% full", 91)
    finally:
        current_stream.reset(token)
        logger.removeHandler(handler)
    await writer.flush()
    [event] = await storage.get_events("stream-1")
    assert event.type == "log"
    assert event.data == {"message": "disk 91% full", "level": "warning", "logger": logger.name}


async def test_logs_from_a_sync_worker_thread_carry_its_stream_id() -> None:
    from streaming_mw import SSEEmitter
    from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
    from streaming_mw.runtime.runner import WorkerRunner

    storage = MemoryEventStorage()
    writer = StorageWriter(storage)
    logger = logging.getLogger("tests.storage.worker")
    handler = StreamLogHandler(writer)
    logger.addHandler(handler)
    config = ChannelConfig()
    channel = AsyncStreamChannel(MemoryChannelBackend(config), config)
    runner = WorkerRunner(1)
    emitter = SSEEmitter(channel)
    await emitter.open()

    def worker(_: object, emitter: SSEEmitter) -> None:
        logger.warning("from the worker thread")

    try:
        await runner.start(worker, None, emitter).task
    finally:
        logger.removeHandler(handler)
        await runner.aclose()
    await writer.flush()
    [event] = await storage.get_events(emitter.stream_id)
    assert event.data == {
        "message": "from the worker thread",
        "level": "warning",
        "logger": logger.name,
    }
