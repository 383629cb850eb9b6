"""The shutdown drain in process: close reasons on spans and in metrics (ASGI 2.3 and 2.4),
the signal hook chained in front of the server's handler, and `drain_timeout` settings."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, ConfigurationError
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.drain import SignalHook
from streaming_mw.runtime.shutdown import drain_timeout, is_draining, start_drain
from streaming_mw.sse import SSEComment, SSEEvent, SSEParser
from streaming_mw.telemetry import ATTR_CLOSE, ATTR_KIND
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.redis_server import free_port
from tests.test_telemetry import STREAM, attrs, make_app, otel, post

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

    from tests.apps.otel_capture import Capture
    from tests.helpers.asgi import SpecVersion

__all__ = ["otel"]  # the fixture, shared with the telemetry tests


def _events(items: list[SSEEvent | SSEComment]) -> list[SSEEvent]:
    return [item for item in items if isinstance(item, SSEEvent)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "STREAMING_MODE", "STREAMING_DRAIN_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_a_drain_closes_streams_with_reason_shutdown(
    otel: Capture, spec: SpecVersion
) -> None:
    app, container = make_app(otel, drain_timeout=0.3)
    client = AsgiClient(app, spec_version=spec)
    direct_path = "/chat/stream?user=alice&count=100000&delay=0.02"
    async with (
        lifespan(app),
        post(client, "/deploy/async", {"steps": 100000, "delay": 0.02}) as followed,
        client.stream("GET", direct_path) as direct,
    ):
        sent = [await followed.read_event(), await followed.read_event()]
        await direct.read_event()
        assert not is_draining(container)
        drain = start_drain(container)
        assert is_draining(container)
        followed_rest, direct_rest = SSEParser(), SSEParser()
        sent += _events(followed_rest.feed(await followed.read_all()))
        cut = _events(direct_rest.feed(await direct.read_all()))
        await drain
        spans = await otel.wait_spans(STREAM, 2)
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in sent if e.id]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # whole events, no gap
    assert followed_rest.retry is not None
    assert direct_rest.retry is not None
    assert cut[-1].event == "error"
    assert json.loads(cut[-1].data)["reason"] == "shutdown"
    assert sorted(attrs(s)[ATTR_KIND] for s in spans) == ["direct", "queue"]
    assert [attrs(s)[ATTR_CLOSE] for s in spans] == ["shutdown", "shutdown"]
    closed = otel.points("streaming_mw.streams.closed")
    assert sorted((p.attributes[ATTR_KIND], p.attributes[ATTR_CLOSE], p.value) for p in closed) == [
        ("direct", "shutdown", 1),
        ("queue", "shutdown", 1),
    ]


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
async def test_the_signal_hook_starts_the_drain_then_calls_the_servers_handler() -> None:
    import asyncio

    calls: list[str] = []
    began = asyncio.Event()

    def server_handler(sig: int, frame: FrameType | None) -> None:
        calls.append(f"server {sig}")

    def begin() -> None:
        calls.append("drain")
        began.set()

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        hook = SignalHook(asyncio.get_running_loop(), begin)
        hook.install()
        hook.install()  # idempotent: chained once
        installed: object = signal.getsignal(signal.SIGTERM)
        assert installed is hook
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(began.wait(), 2)
        assert calls == [f"server {signal.SIGTERM}", "drain"]  # the drain runs on the loop
        hook.uninstall()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)


def test_a_signal_left_at_its_default_is_not_taken_over() -> None:
    import asyncio

    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        loop = asyncio.new_event_loop()
        hook = SignalHook(loop, lambda: None)
        hook.install()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        hook.uninstall()
        loop.close()
    finally:
        signal.signal(signal.SIGTERM, original)


def test_drain_timeout_comes_from_the_options_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streaming_mw import init_streaming

    container = StreamingContainer()
    assert drain_timeout(container) == 5.0
    monkeypatch.setenv("STREAMING_DRAIN_TIMEOUT", "12.5")
    assert drain_timeout(container) == 12.5
    init_streaming(channel_config=ChannelConfig(drain_timeout=1.5), container=container)
    assert drain_timeout(container) == 1.5
    monkeypatch.setenv("STREAMING_DRAIN_TIMEOUT", "-1")
    with pytest.raises(ConfigurationError, match="STREAMING_DRAIN_TIMEOUT"):
        drain_timeout(StreamingContainer())


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5"])
def test_a_bad_drain_timeout_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="drain_timeout"):
        ChannelConfig(drain_timeout=value)


async def test_the_listener_watch_starts_the_drain_when_the_listening_socket_closes(
    tmp_path: Path,
) -> None:
    import asyncio
    import socket

    from streaming_mw.runtime.listeners import ListenerWatch, listening_sockets

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "app.sock"))
    unix.listen()
    connected = socket.create_connection(("127.0.0.1", port))  # same port, not listening
    began = asyncio.Event()
    try:
        assert [fd for fd, _ in listening_sockets(("127.0.0.1", port))] == [listener.fileno()]
        assert [fd for fd, _ in listening_sockets((str(tmp_path / "app.sock"), None))] == [
            unix.fileno()
        ]
        assert not ListenerWatch(began.set).track(None)
        assert not ListenerWatch(began.set).track(("127.0.0.1", free_port()))
        watch = ListenerWatch(began.set, interval=0.01)
        assert watch.track(("10.1.2.3", port))  # the host a request came by: the port counts
        await asyncio.sleep(0.05)
        assert not began.is_set()  # still listening
        listener.close()
        await asyncio.wait_for(began.wait(), 5)
    finally:
        listener.close()
        unix.close()
        connected.close()


async def test_a_sync_worker_that_ignores_the_cancellation_is_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner tells sync workers through ``emitter.cancelled``, ends every stream with
    ``error {reason: shutdown}``, and does not wait for a thread that ignores it: its thread
    is a daemon thread, which does not hold the process's exit either."""
    import asyncio
    import time

    from streaming_mw import SSEEmitter
    from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
    from streaming_mw.runtime.runner import WorkerRunner

    release = threading.Event()
    seen: dict[str, object] = {}

    def stubborn(config: Any, emitter: SSEEmitter) -> None:
        seen["daemon"] = threading.current_thread().daemon
        release.wait(30)  # a blocking call that never looks at emitter.cancelled

    def polite(config: Any, emitter: SSEEmitter) -> None:
        seen["polite"] = "started"
        while not emitter.cancelled:
            time.sleep(0.01)
        seen["polite"] = "saw cancelled"

    config = ChannelConfig()
    channel = AsyncStreamChannel(MemoryChannelBackend(config), config)
    runner = WorkerRunner(4)
    emitters = [SSEEmitter(channel), SSEEmitter(channel)]
    for emitter in emitters:
        await emitter.open()
    followers = [await channel.follow(e.stream_id) for e in emitters]
    runner.start(stubborn, None, emitters[0])
    runner.start(polite, None, emitters[1])
    try:
        for _ in range(2000):  # up to 20 s on a loaded machine
            if "daemon" in seen and "polite" in seen:
                break
            await asyncio.sleep(0.01)
        assert seen == {"daemon": True, "polite": "started"}, "the sync workers did not start"
        await asyncio.wait_for(runner.aclose(), 10)  # not the thread's 30 s
        for follower in followers:
            event = await follower.next(2.0)
            assert event is not None
            assert event.type == "error"
            assert isinstance(event.data, dict)
            assert event.data["reason"] == "shutdown"
        assert seen["daemon"] is True
        for _ in range(2000):
            if seen["polite"] != "started":
                break
            await asyncio.sleep(0.01)
        assert seen["polite"] == "saw cancelled"
        assert "still running at shutdown" in caplog.text
    finally:
        release.set()
        for follower in followers:
            follower.aclose()
