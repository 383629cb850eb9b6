"""Server-Sent Events wire framing (DESIGN §4) and a spec-compliant incremental parser.

Encoding never lets a caller's value break the framing: ``event`` and ``id`` reject CR, LF and
NUL, and text data is split on every line break into several ``data:`` lines. The parser follows
the WHATWG "event stream interpretation" rules and reads what the encoder writes back exactly.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson

from ._types import check_sse_field
from .errors import InvalidEventError
from .events import ServerSentEventLike, StreamEvent

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "PING",
    "SSE_HEADERS",
    "SSEComment",
    "SSEEvent",
    "SSEParser",
    "ServerSentEventLike",
    "encode",
    "encode_comment",
    "encode_event",
    "encode_item",
    "encode_retry",
    "encode_stream_event",
    "sse_headers",
]

SSE_HEADERS: Final[Mapping[str, str]] = {
    "content-type": "text/event-stream",
    "cache-control": "no-store",
    "x-accel-buffering": "no",
}
"""Headers of every event-stream response. No ``Connection`` header: HTTP/2 forbids it."""

PING: Final = b": ping\n\n"
"""The keep-alive frame: a comment line, ignored by `EventSource`."""

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_headers(stream_id: str | None = None) -> dict[str, str]:
    """The standard event-stream headers, plus ``X-Stream-ID`` when a stream id is given."""
    headers = dict(SSE_HEADERS)
    if stream_id is not None:
        headers["x-stream-id"] = check_sse_field("id", stream_id)
    return headers


def _split_lines(text: str) -> list[str]:
    return _LINE_BREAK.split(text)


def _json(value: object) -> str:
    try:
        return orjson.dumps(value, default=_json_default).decode()
    except TypeError as exc:
        raise InvalidEventError(f"event data is not JSON-serialisable: {exc}") from exc


def _json_default(value: object) -> object:
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _utf8(frame: str) -> bytes:
    try:
        return frame.encode()
    except UnicodeEncodeError as exc:
        raise _not_unicode(exc) from exc


def _not_unicode(exc: UnicodeEncodeError) -> InvalidEventError:
    return InvalidEventError(f"event contains text that is not valid Unicode: {exc}")


def encode(
    *,
    data: object = None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one SSE frame.

    ``data`` that is a ``str`` is sent as text, one ``data:`` line per line of it (CR, LF and
    CRLF all count as line breaks, as they do for the browser); ``None`` sends no data line;
    anything else is sent as one line of compact JSON. ``event`` and ``id`` must be single lines
    without NUL (`InvalidFieldError` otherwise). ``retry`` is the reconnection delay in ms.
    """
    if comment is None and retry is None and data is not None and not isinstance(data, str):
        # The usual frame, inline because it runs once per event: `id`/`event` lines and one
        # JSON data line. Printable, non-empty fields are safe (see check_sse_field); anything
        # else is checked field by field, which raises for CR, LF, NUL or an empty event name.
        try:
            body = orjson.dumps(data, default=_json_default)
        except TypeError as exc:
            raise InvalidEventError(f"event data is not JSON-serialisable: {exc}") from exc
        if id is not None and event is not None:
            if not (id.isprintable() and event.isprintable() and event):
                check_sse_field("id", id)
                check_sse_field("event", event)
            head = f"id: {id}\nevent: {event}\ndata: "
        elif id is not None:
            head = f"id: {check_sse_field('id', id)}\ndata: "
        elif event is not None:
            head = f"event: {check_sse_field('event', event)}\ndata: "
        else:
            return b"data: " + body + b"\n\n"
        try:
            return head.encode() + body + b"\n\n"
        except UnicodeEncodeError as exc:
            raise _not_unicode(exc) from exc
    lines: list[str] = []
    if comment is not None:
        lines.extend(": " + line for line in _split_lines(comment))
    if id is not None:
        lines.append("id: " + check_sse_field("id", id))
    if event is not None:
        lines.append("event: " + check_sse_field("event", event))
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise InvalidEventError(f"retry must be a non-negative integer, got {retry!r}")
        lines.append(f"retry: {retry}")
    if isinstance(data, str):
        lines.extend("data: " + line for line in _split_lines(data))
    elif data is not None:
        lines.append("data: " + _json(data))
    if not lines:
        raise InvalidEventError("an SSE frame needs data, event, id, retry or a comment")
    lines.append("\n")
    return _utf8("\n".join(lines))


def encode_comment(text: str) -> bytes:
    """A comment frame (``: text``), for keep-alives and diagnostics."""
    return encode(comment=text)


def encode_retry(milliseconds: int) -> bytes:
    """A frame that only sets the client's reconnection delay."""
    return encode(retry=milliseconds)


def encode_stream_event(event: StreamEvent | ServerSentEventLike) -> bytes:
    """Frame a `StreamEvent`: its cursor as ``id``, its type as ``event``, data as one JSON line.

    The type and id were checked when the event was built, so this is the fast path used for
    every event a stream sends. FastAPI's ``ServerSentEvent`` is framed as FastAPI frames it
    (`encode_event`).
    """
    if not isinstance(event, StreamEvent):
        return encode_event(event)
    event_id = event.id
    head = (
        f"id: {event_id}\nevent: {event.type}\ndata: "
        if event_id is not None
        else f"event: {event.type}\ndata: "
    )
    body = orjson.dumps(event.data, default=_json_default)
    try:
        return head.encode() + body + b"\n\n"
    except UnicodeEncodeError as exc:
        raise _not_unicode(exc) from exc


def encode_event(sse: ServerSentEventLike) -> bytes:
    """Frame a `fastapi.sse.ServerSentEvent` with FastAPI's meaning of its fields.

    ``data`` is always JSON (a string is quoted), ``raw_data`` is sent as text.
    """
    data: object = sse.raw_data if sse.raw_data is not None else None
    if sse.data is not None:
        data = _json(sse.data)
    return encode(data=data, event=sse.event, id=sse.id, retry=sse.retry, comment=sse.comment)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event as a client sees it (and a text event to encode).

    ``event`` is ``None`` when the block had no ``event:`` field (the browser calls it
    ``message``); ``id`` is this block's ``id:`` field, ``None`` when it had none.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class SSEComment:
    """A comment line (``: text``), such as a keep-alive ping."""

    text: str


def encode_item(item: StreamEvent | SSEEvent | ServerSentEventLike) -> bytes:
    """Frame any event object the library accepts."""
    if isinstance(item, StreamEvent):
        return encode_stream_event(item)
    if isinstance(item, SSEEvent):
        return encode(data=item.data, event=item.event, id=item.id, retry=item.retry)
    return encode_event(item)


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed bytes as they arrive, get events out.

    Follows the WHATWG rules: UTF-8 with a leading BOM dropped, CR / LF / CRLF line ends (also
    split across chunks), one optional space after the colon, ``id`` containing NUL ignored,
    ``retry`` only when all digits, blocks without data not dispatched.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id = ""
        """The last ``id`` seen on the stream (what a browser sends back as Last-Event-ID)."""
        self.retry: int | None = None
        """The last reconnection delay the server set, in milliseconds."""

    def feed(self, chunk: bytes) -> list[SSEEvent | SSEComment]:
        """Consume ``chunk`` and return the events and comments completed by it, in order."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buffer = self._buffer + text
        out: list[SSEEvent | SSEComment] = []
        start = 0
        for match in _LINE_BREAK.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer):
                break  # may be the first half of a CRLF split across chunks
            self._line(buffer[start : match.start()], out)
            start = match.end()
        self._buffer = buffer[start:]
        return out

    def feed_all(self, chunks: Iterable[bytes]) -> list[SSEEvent | SSEComment]:
        """Feed every chunk and return everything they complete."""
        return [item for chunk in chunks for item in self.feed(chunk)]

    def _line(self, line: str, out: list[SSEEvent | SSEComment]) -> None:
        if not line:
            self._dispatch(out)
            return
        name, colon, value = line.partition(":")
        if not name and colon:
            out.append(SSEComment(value.removeprefix(" ")))
            return
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = self.retry = int(value)

    def _dispatch(self, out: list[SSEEvent | SSEComment]) -> None:
        if self._data:
            out.append(SSEEvent("\n".join(self._data), self._event or None, self._id, self._retry))
        self._data = []
        self._event = self._id = self._retry = None
