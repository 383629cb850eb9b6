"""Streaming routes are described truthfully in OpenAPI (`streaming_mw.web.stream_route`)."""

from __future__ import annotations

from typing import Any

import pytest

from examples.demo.app import app as demo_app


def operation(doc: dict[str, Any], path: str) -> dict[str, Any]:
    methods = doc["paths"][path]
    found: dict[str, Any] = methods.get("get") or methods["post"]
    return found


def event_types(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    stream = op["responses"]["200"]["content"]["text/event-stream"]
    return {
        variant["properties"]["event"]["const"]: variant["properties"]["data"]["contentSchema"]
        for variant in stream["itemSchema"]["oneOf"]
    }


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return demo_app.openapi()


@pytest.mark.parametrize("path", ["/chat/stream", "/deploy", "/streams/{stream_id}"])
def test_streaming_routes_are_event_streams_not_json(doc: dict[str, Any], path: str) -> None:
    content = operation(doc, path)["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


def test_event_types_and_their_data_schemas(doc: dict[str, Any]) -> None:
    deploy = event_types(operation(doc, "/deploy"))
    assert set(deploy) == {"log", "progress", "complete", "error", "reset"}
    assert deploy["progress"]["properties"]["percent"]["maximum"] == 100
    assert deploy["reset"]["properties"]["reason"]["enum"] == [
        "expired",
        "unknown",
        "epoch_changed",
    ]
    chat = set(event_types(operation(doc, "/chat/stream")))
    assert chat == {"stream", "token", "complete", "error"}


def test_error_answers_and_the_resume_header(doc: dict[str, Any]) -> None:
    chat = operation(doc, "/chat/stream")["responses"]
    assert {"400", "429", "503"} <= set(chat)
    assert "Retry-After" in chat["429"]["headers"]
    assert set(chat["429"]["content"]["application/json"]["schema"]["properties"]) == {
        "detail",
        "limit",
        "retry_after",
    }
    follow = operation(doc, "/streams/{stream_id}")
    assert {"204", "404"} <= set(follow["responses"])
    headers = [p for p in follow["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in headers] == ["Last-Event-ID"]
    assert "429" not in operation(doc, "/deploy")["responses"]  # it holds no lease
