"""Nothing secret or unbounded reaches logs and spans: Redis credentials in any part of the URL,
the client's raw `Last-Event-ID`, and (when the app asks) user ids."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from streaming_mw import ChannelConfig, StreamLeaseConfig, init_streaming
from streaming_mw.config import QueueRedisConfig, load_settings, redact_url
from streaming_mw.errors import ConfigurationError
from streaming_mw.runtime import StreamingContainer
from streaming_mw.runtime.container import init_telemetry
from streaming_mw.runtime.startup import start_container, stop_container
from streaming_mw.telemetry import ATTR_RESUME
from tests.apps.otel_capture import Capture
from tests.apps.traced_web import build_app
from tests.helpers.asgi import AsgiClient, lifespan
from tests.helpers.redis_server import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fastapi import FastAPI
    from opentelemetry.sdk.trace import ReadableSpan

    from streaming_mw.telemetry import UserIdPolicy

SECRET = "hunter2-do-not-log"  # noqa: S105 (the value that must never be logged)
USER = "alice@example.com"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "STREAMING_MODE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def otel() -> Iterator[Capture]:
    capture = Capture()
    yield capture
    capture.shutdown()


def traced_app(otel: Capture, user_ids: UserIdPolicy = "raw") -> FastAPI:
    container = StreamingContainer()
    init_streaming(
        mode="memory",
        channel_config=ChannelConfig(),
        lease_config=StreamLeaseConfig(limit=1, ttl_seconds=30),
        container=container,
    )
    init_telemetry(
        otel.tracer_provider, otel.meter_provider, user_ids=user_ids, container=container
    )
    return build_app(container, otel.tracer_provider, otel.meter_provider)


def every_value(spans: list[ReadableSpan], prefix: str = "") -> list[Any]:
    """Every attribute value of the spans and their events (keys starting with ``prefix``)."""
    values: list[Any] = []
    for span in spans:
        for attributes in [span.attributes, *(event.attributes for event in span.events)]:
            values += [v for k, v in (attributes or {}).items() if k.startswith(prefix)]
    return values


@pytest.mark.parametrize(
    "url",
    [
        f"redis://127.0.0.1:{{port}}/0?password={SECRET}",
        f"redis://user:{SECRET}@127.0.0.1:{{port}}/0",
        f"redis://127.0.0.1:{{port}}/0?username=u&password={SECRET}",
    ],
)
async def test_a_redis_password_anywhere_in_the_url_is_never_logged(
    url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = url.format(port=free_port())  # nothing listens: startup falls back and says where
    monkeypatch.setenv("REDIS_URL", url)
    caplog.set_level(logging.DEBUG)
    container = StreamingContainer()
    await start_container(container)
    await stop_container(container)
    assert "STREAMING FALLBACK" in caplog.text
    assert SECRET not in caplog.text
    assert "***" in caplog.text
    assert SECRET not in repr(QueueRedisConfig(url))
    assert SECRET not in redact_url(url)


def test_secret_query_parameters_are_redacted() -> None:
    url = f"rediss://h:6380/0?ssl_cert_reqs=none&token={SECRET}&api_key={SECRET}"
    assert redact_url(url) == "rediss://h:6380/0?ssl_cert_reqs=none&token=***&api_key=***"


def test_a_bad_redis_url_error_does_not_quote_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://u:{SECRET}@host/?password={SECRET}")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)


async def test_a_50000_character_last_event_id_never_reaches_a_span(otel: Capture) -> None:
    app = traced_app(otel)
    client = AsgiClient(app)
    headers = {"content-type": "application/json"}
    async with lifespan(app):
        body = json.dumps({"steps": 2}).encode()
        async with client.stream("POST", "/deploy/async", body=body, headers=headers) as first:
            stream_id = first.header("x-stream-id")
            await first.read_all()
        hostile = {"last-event-id": "x" * 50_000}
        async with client.stream("GET", f"/streams/{stream_id}", headers=hostile) as again:
            assert again.status == 200
            await again.read_all()
        [resumed] = await otel.wait_spans(
            "sse.stream", where=lambda s: ATTR_RESUME in (s.attributes or {})
        )
    assert (resumed.attributes or {})[ATTR_RESUME] == "invalid"
    longest = max(len(str(v)) for v in every_value(otel.spans()))
    assert longest < 1000


@pytest.mark.parametrize("policy", ["drop", "hash"])
async def test_user_ids_can_be_kept_out_of_every_span(otel: Capture, policy: UserIdPolicy) -> None:
    app = traced_app(otel, user_ids=policy)
    client = AsgiClient(app)
    path = f"/chat/stream?user={USER}&count=2&delay=0.2"
    async with lifespan(app), client.stream("GET", path) as first:
        assert first.status == 200
        await first.read_event()
        async with client.stream("GET", path) as refused:  # limit 1: a lease rejection event
            assert refused.status == 429
            await refused.read_all()
        await first.read_all()
        await otel.wait_spans("sse.stream")
    # what the library records (the app's own HTTP instrumentation records its URL as it likes)
    values = [str(v) for v in every_value(otel.spans(), prefix="streaming_mw.")]
    assert values, "no attribute of the library was recorded"
    assert not [v for v in values if "alice" in v]
    pseudonym = hashlib.sha256(USER.encode()).hexdigest()[:16]
    assert (pseudonym in values) is (policy == "hash")


def test_an_unknown_user_id_policy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="user_ids"):
        init_telemetry(user_ids="sometimes", container=StreamingContainer())  # type: ignore[arg-type]
