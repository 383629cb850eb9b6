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
from tests.test_telemetry import STREAM, attrs, make_app, otel, post

if TYPE_CHECKING:
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
