"""Reading the events of an ``httpx`` response with the library's spec-compliant `SSEParser`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..sse import SSEEvent, SSEParser

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import httpx

__all__ = ["aiter_events", "aread_events", "data_of", "iter_events", "read_events"]


def _check(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise AssertionError(
            f"expected a text/event-stream response, got {response.status_code} {content_type!r}"
        )


def iter_events(response: httpx.Response) -> Iterator[SSEEvent]:
    """The events of a streaming response as they arrive (comments such as pings skipped).

    Use it inside ``with client.stream(...) as response`` (httpx or Starlette's TestClient).
    Raises `AssertionError` when the response is not ``text/event-stream``.
    """
    _check(response)
    parser = SSEParser()
    for chunk in response.iter_bytes():
        for item in parser.feed(chunk):
            if isinstance(item, SSEEvent):
                yield item


async def aiter_events(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """`iter_events` for ``async with client.stream(...) as response``."""
    _check(response)
    parser = SSEParser()
    async for chunk in response.aiter_bytes():
        for item in parser.feed(chunk):
            if isinstance(item, SSEEvent):
                yield item


def read_events(response: httpx.Response) -> list[SSEEvent]:
    """Every event until the response ends."""
    return list(iter_events(response))


async def aread_events(response: httpx.Response) -> list[SSEEvent]:
    """Every event until the response ends (async)."""
    return [event async for event in aiter_events(response)]


def data_of(event: SSEEvent) -> Any:
    """The event's ``data`` parsed as JSON (the library's events carry one line of JSON)."""
    return json.loads(event.data)
