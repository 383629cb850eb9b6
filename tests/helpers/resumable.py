"""What the resumable-stream tests share: fresh ids, an event's data and cursor ``seq``, and
reading a stream up to its terminal event (from an in-process response or a socket client)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from streaming_mw.sse import SSEEvent


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def data(event: SSEEvent) -> Any:
    return orjson.loads(event.data)


def seq(event: SSEEvent) -> int:
    """The ``<seq>`` of the event's ``<epoch>-<seq>`` id."""
    assert event.id is not None
    return int(event.id.rpartition("-")[2])


async def read_until_end(
    next_event: Callable[[float], Awaitable[SSEEvent]], timeout: float = 10.0
) -> list[SSEEvent]:
    """Events from ``next_event`` (``AsgiResponse.read_event``, ``SSEClient.next_event``) up to
    and including the first ``complete`` or ``error``."""
    events = []
    while True:
        event = await next_event(timeout)
        events.append(event)
        if event.event in ("complete", "error"):
            return events
