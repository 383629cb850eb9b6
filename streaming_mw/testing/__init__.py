"""Helpers for testing streaming routes in your own test suite (the ``testing`` extra:
``pip install "streaming-mw[testing]"``).

- `read_events` / `aread_events` / `iter_events` / `aiter_events`: the events of an ``httpx``
  (or Starlette ``TestClient``) streaming response, parsed with the library's `SSEParser`;
  `data_of` parses an event's JSON data;
- `streaming_client`: runs an app with its lifespan in memory mode behind an
  ``httpx.AsyncClient``;
- `serve_in_thread`: a real uvicorn server in a thread, for streams that never end;
- the pytest plugin (`streaming_mw.testing.plugin`, registered as an entry point): the
  ``streaming_client`` and ``streaming_server`` fixtures.
"""

from __future__ import annotations

from ..sse import SSEEvent
from .app import streaming_client
from .events import aiter_events, aread_events, data_of, iter_events, read_events
from .server import serve_in_thread

__all__ = [
    "SSEEvent",
    "aiter_events",
    "aread_events",
    "data_of",
    "iter_events",
    "read_events",
    "serve_in_thread",
    "streaming_client",
]
