"""Describe streaming routes truthfully in OpenAPI: ``text/event-stream`` with the schema of each
event type, ``Last-Event-ID`` where a route resumes, and the error answers the middleware gives.

One line on the route decorator::

    @app.post("/deploy", **stream_route(EMITTER_EVENTS, limited=True))
    @app.get("/streams/{stream_id}", **stream_route(EMITTER_EVENTS, resumes=True))

Each event is documented as OpenAPI 3.2 does for Server-Sent Events: an ``itemSchema`` whose
``data`` is a JSON string with a ``contentSchema`` (FastAPI's own ``EventSourceResponse`` uses
the same shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from starlette.responses import StreamingResponse

__all__ = ["EMITTER_EVENTS", "TOKEN_EVENTS", "stream_route"]

JSONSchema = Mapping[str, Any]

_ERROR_DATA: Final[JSONSchema] = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "reason": {
            "type": "string",
            "description": "`internal_error`, `idle_timeout`, `cancelled`, `shutdown`, "
            "`dead_letter`, `no_worker`, …",
        },
        "error_id": {"type": "string", "description": "quote it to support: the server log"},
    },
    "required": ["message"],
}

EMITTER_EVENTS: Final[Mapping[str, JSONSchema]] = {
    "log": {
        "type": "object",
        "properties": {"message": {"type": "string"}, "level": {"type": "string"}},
        "required": ["message", "level"],
    },
    "progress": {
        "type": "object",
        "properties": {
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "step": {"type": ["string", "null"]},
        },
        "required": ["percent"],
    },
    "complete": {
        "type": "object",
        "properties": {"success": {"type": "boolean"}},
        "required": ["success"],
        "additionalProperties": True,
    },
    "error": _ERROR_DATA,
    "reset": {
        "type": "object",
        "properties": {"reason": {"enum": ["expired", "unknown", "epoch_changed"]}},
        "required": ["reason"],
    },
}
"""The events of `SSEEmitter`/`DeploymentEmitter` streams (and ``reset`` on a resume)."""

TOKEN_EVENTS: Final[Mapping[str, JSONSchema]] = {
    "stream": {
        "type": "object",
        "properties": {"stream_id": {"type": "string"}},
        "description": "first event of a resumable answer: the id to resume it with",
    },
    "token": {"type": "object", "properties": {"token": {"type": "string"}}},
    "complete": EMITTER_EVENTS["complete"],
    "error": _ERROR_DATA,
}
"""The events of a chat answer streamed token by token (`resumable_response` sends ``stream``
first)."""


class _EventStream(StreamingResponse):
    """Only for documentation: the media type FastAPI puts on the route's 200 answer."""

    media_type = "text/event-stream"


def _detail(description: str, **extra: JSONSchema) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"detail": {"type": "string"}, **extra},
        "required": ["detail"],
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _retry_after() -> dict[str, Any]:
    return {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def _item_schema(events: Mapping[str, JSONSchema]) -> dict[str, Any]:
    variants = [
        {
            "type": "object",
            "properties": {
                "event": {"const": name},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": dict(schema),
                },
                "id": {"type": "string", "description": "cursor `<epoch>-<seq>`"},
                "retry": {"type": "integer", "minimum": 0},
            },
            "required": ["event", "data"],
        }
        for name, schema in events.items()
    ]
    return {"oneOf": variants}


def stream_route(
    events: Mapping[str, JSONSchema] = EMITTER_EVENTS,
    *,
    resumes: bool = False,
    limited: bool = False,
    jobs: bool = False,
    description: str = "The event stream (`text/event-stream`).",
) -> dict[str, Any]:
    """Keyword arguments for a FastAPI route decorator that declare a streaming route.

    ``events`` maps each event type the route sends to the JSON Schema of its data. With
    ``resumes``, the route takes ``Last-Event-ID`` (header, or ``last_event_id`` query) and may
    answer ``204`` (the stream already ended) and ``404`` (an unknown stream, or another
    user's). ``limited``: it holds a stream lease (``429`` with ``Retry-After``). ``jobs``: it
    enqueues a job (``413`` for a payload too large). Every streaming route may answer ``400``
    for bad input and ``503`` while the backend is unreachable or the process drains.
    """
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "description": description,
            "content": {"text/event-stream": {"itemSchema": _item_schema(events)}},
        },
        400: _detail("Invalid input: a malformed id or user id"),
        503: {
            **_detail("The streaming backend is unreachable, or the server is shutting down"),
            "headers": _retry_after(),
        },
    }
    extra: dict[str, Any] = {}
    if resumes:
        responses[204] = {"description": "The stream already ended: nothing after this cursor"}
        responses[404] = _detail("No such stream (or it belongs to another user)")
        extra["parameters"] = [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Resume strictly after this cursor (`<epoch>-<seq>`)",
                "schema": {"type": "string"},
            },
            {
                "name": "last_event_id",
                "in": "query",
                "required": False,
                "description": "The same, for clients that cannot set headers",
                "schema": {"type": "string"},
            },
        ]
    if limited:
        responses[429] = {
            **_detail(
                "Too many concurrent streams for this user",
                limit={"type": "integer"},
                retry_after={"type": "number"},
            ),
            "headers": _retry_after(),
        }
    if jobs:
        responses[413] = _detail(
            "The job payload is larger than the queue accepts",
            size={"type": "integer"},
            limit={"type": "integer"},
        )
    route: dict[str, Any] = {
        "status_code": 200,
        "response_class": _EventStream,
        "responses": responses,
    }
    if extra:
        route["openapi_extra"] = extra
    return route
