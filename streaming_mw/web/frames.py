"""The last frame of a stream that the middleware ends itself (a failure of the app, the
shutdown drain, or a lost lease) or that a follower is cut off with, and the headers event
streams share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from .._failure import failure_details
from ..errors import SlowConsumerError
from ..events import EventType, StreamEvent
from ..runtime.drain import drain_retry_ms
from ..sse import encode, encode_stream_event

if TYPE_CHECKING:
    from starlette.types import Message

    from .._types import JSONValue

__all__ = [
    "CloseReason",
    "CutReason",
    "StreamReporter",
    "cut_frame",
    "cut_off_frame",
    "failure_frame",
    "idle_timeout_frame",
    "is_event_stream",
    "shared_headers",
]

_RECONNECT_MS = 1000
"""The ``retry:`` of a follower cut off (it resumes from its cursor)."""

CloseReason: TypeAlias = Literal[
    "completed", "client_disconnect", "limit", "idle_timeout", "shutdown", "error", "write_timeout"
]
"""Why a stream ended (the span's and the ``streams_closed`` metric's ``close_reason``):
``write_timeout`` is a client that stopped reading, ended as a disconnect."""

CutReason: TypeAlias = Literal["shutdown", "lease_lost", "write_timeout"]
"""Why the middleware cut a stream short."""


class StreamReporter(Protocol):
    """What a stream response knows of itself (see `EventStreamResponse`)."""

    events_sent: int
    close_reason: CloseReason | None

    @property
    def resume_cursor(self) -> str | None: ...


_MESSAGES: dict[CutReason, str] = {
    "shutdown": "the server is shutting down",
    "lease_lost": "the stream's lease was lost",
    "write_timeout": "the client stopped reading",
}


def failure_frame(
    exc: BaseException, stream_id: str | None, error_id: str, *, expose: bool
) -> bytes:
    """``error {reason: "internal_error", error_id}`` for an app that failed mid-stream."""
    data: dict[str, JSONValue] = {
        "message": "internal error",
        **failure_details(exc, error_id, expose=expose),
    }
    return encode_stream_event(StreamEvent(EventType.ERROR, data, None, stream_id))


def cut_frame(reason: CutReason, stream_id: str | None, *, followed: bool) -> bytes:
    """The last frame of a stream cut for ``reason``.

    The shutdown: a followed stream gets a ``retry:`` hint (it resumes elsewhere), a direct one
    ``error {reason: "shutdown"}`` and ``retry:``. A lost lease: ``error {reason:
    "lease_lost"}``, a terminal event, without ``retry:``."""
    if reason == "shutdown" and followed:
        return encode(comment="shutdown: resume elsewhere", retry=drain_retry_ms())
    data: dict[str, JSONValue] = {"message": _MESSAGES[reason], "reason": reason}
    frame = encode_stream_event(StreamEvent(EventType.ERROR, data, None, stream_id))
    return frame + encode(retry=drain_retry_ms()) if reason == "shutdown" else frame


def is_event_stream(message: Message) -> bool:
    """Whether an ``http.response.start`` message starts a ``text/event-stream`` response."""
    for name, value in message.get("headers", ()):
        if name.lower() == b"content-type":
            return bytes(value).lower().startswith(b"text/event-stream")
    return False


def cut_off_frame(exc: Exception) -> tuple[CloseReason, bytes]:
    """Why a follower cut off by ``exc`` (a `SlowConsumerError`, or the backend failing
    mid-stream) ends, and its last frame: ``retry:``, to resume from its cursor. A backend that
    failed (a history read, a resync) is a transient cause: the client resumes rather than
    reading a terminal error."""
    if isinstance(exc, SlowConsumerError):
        return "limit", encode(comment="slow consumer: resume", retry=_RECONNECT_MS)
    return "error", encode(comment="backend unavailable: resume", retry=_RECONNECT_MS)


_SHARED_HEADERS: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}


def shared_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``raw`` (an event stream's headers) with the ones every stream sends alike made once
    per process, not once per response: about 600 bytes less for each open stream. Only
    ``x-stream-id`` differs between streams."""
    return [h if h[0] == b"x-stream-id" else _SHARED_HEADERS.setdefault(h, h) for h in raw]


def idle_timeout_frame(stream_id: str, seconds: float, detail: dict[str, JSONValue]) -> bytes:
    """``error {reason: "idle_timeout"}`` for a stream nobody published to for ``seconds``,
    with ``detail`` (say, why: a job no worker picked up)."""
    data: dict[str, JSONValue] = {"message": f"no event for {seconds:g}s", "reason": "idle_timeout"}
    data.update(detail)
    return encode_stream_event(StreamEvent(EventType.ERROR, data, None, stream_id))
