"""A minimal HTTP/1.1 client over a raw socket that reads SSE bodies incrementally."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json as jsonlib
import socket
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from streaming_mw.sse import SSEComment, SSEEvent, SSEParser

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

_READ_SIZE = 65536
_NO_BODY_STATUSES = {204, 304}


class IncompleteBody(EOFError):
    """The connection ended (or was reset) before the response body was complete."""


class BodyDecoder:
    """Turn raw response bytes into body bytes: chunked, content-length or until close."""

    def __init__(self, mode: Literal["chunked", "length", "close"], length: int = 0) -> None:
        self.mode = mode
        self.remaining = length
        self.done = mode == "length" and length == 0
        self._buf = bytearray()
        self._state: Literal["size", "data", "crlf", "trailers"] = "size"

    def feed(self, data: bytes) -> bytes:
        """Decode ``data`` and return the body bytes it completes."""
        if self.mode == "close":
            return data
        if self.mode == "length":
            body = data[: self.remaining]
            self.remaining -= len(body)
            self.done = self.remaining == 0
            return body
        self._buf += data
        out = bytearray()
        while not self.done and self._step(out):
            pass
        return bytes(out)

    def _step(self, out: bytearray) -> bool:
        if self._state == "data":
            take = bytes(self._buf[: self.remaining])
            del self._buf[: len(take)]
            out += take
            self.remaining -= len(take)
            if self.remaining:
                return False
            self._state = "crlf"
            return True
        line = self._take_line()
        if line is None:
            return False
        if self._state == "size":
            self.remaining = int(line.split(b";", 1)[0].strip(), 16)
            self._state = "data" if self.remaining else "trailers"
        elif self._state == "crlf":
            self._state = "size"
        elif not line:
            self.done = True
        return True

    def _take_line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line


class SSEClient:
    """One HTTP request on its own connection; the response is read as it arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.comments: list[str] = []
        self._reader = reader
        self._writer = writer
        self._raw = bytearray()
        self._decoder = BodyDecoder("close")
        self._body = bytearray()
        self._body_done = False
        self._parser = SSEParser()
        self._events: collections.deque[SSEEvent] = collections.deque()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        target: str | tuple[str, int],
        path: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: float = 5.0,
        receive_buffer: int | None = None,
    ) -> AsyncIterator[SSEClient]:
        """Connect to ``target`` (``http://host:port`` or ``(host, port)``), send the
        request and yield once the status line and headers have been read.
        ``receive_buffer`` sets ``SO_RCVBUF`` before connecting (a small window: a client
        that stops reading blocks the server's sends sooner)."""
        host, port = _host_port(target)
        async with asyncio.timeout(timeout):
            if receive_buffer is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                reader, writer = await asyncio.open_connection(sock=sock, limit=receive_buffer)
        client = cls(reader, writer)
        try:
            async with asyncio.timeout(timeout):
                await client._send_request(f"{host}:{port}", method, path, headers, json)
                await client._read_head(method)
            yield client
        finally:
            await client.close()

    @property
    def last_event_id(self) -> str:
        """The parser's last event id (what a browser would send as ``Last-Event-ID``)."""
        return self._parser.last_event_id

    @property
    def retry(self) -> int | None:
        """The last ``retry:`` the server sent (None if none so far)."""
        return self._parser.retry

    async def next_event(self, timeout: float = 5.0) -> SSEEvent:
        """The next event; ``TimeoutError`` if none arrives in time, ``EOFError`` at the end
        of the body (``IncompleteBody`` if the connection broke first)."""
        async with asyncio.timeout(timeout):
            while not self._events:
                if self._body_done and not self._body:
                    raise EOFError("response body ended")
                if not self._body:
                    await self._read_body_bytes()
                self._parse_pending()
            return self._events.popleft()

    async def events(self, timeout: float = 5.0) -> AsyncIterator[SSEEvent]:
        """Every remaining event until the body ends; ``timeout`` applies to each event."""
        while True:
            try:
                event = await self.next_event(timeout)
            except IncompleteBody:
                raise
            except EOFError:
                return
            yield event

    async def read_body(self, timeout: float = 5.0) -> bytes:
        """The rest of the body, undecoded by the SSE parser."""
        async with asyncio.timeout(timeout):
            while not self._body_done:
                await self._read_body_bytes()
        body = bytes(self._body)
        self._body.clear()
        return body

    async def read_json(self, timeout: float = 5.0) -> Any:
        """The rest of the body parsed as JSON."""
        return jsonlib.loads(await self.read_body(timeout))

    def pause(self) -> None:
        """Stop reading from the socket (its receive buffer fills, the server's sends block)."""
        self._writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume(self) -> None:
        """Read from the socket again."""
        self._writer.transport.resume_reading()  # type: ignore[attr-defined]

    def abort(self) -> None:
        """Drop the connection at once (TCP reset, no orderly close)."""
        self._writer.transport.abort()

    def half_close(self) -> None:
        """Send a FIN (``shutdown(SHUT_WR)``): the server sees the client go away cleanly."""
        self._writer.get_extra_info("socket").shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Drop the connection with a TCP RST for sure: ``SO_LINGER`` 0, then close (`abort`
        alone sends a FIN when nothing unread is left in the receive buffer)."""
        sock = self._writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()

    async def close(self, timeout: float = 5.0) -> None:
        """Close the connection; safe to call more than once and after ``abort``."""
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(timeout):
                await self._writer.wait_closed()

    async def _send_request(
        self,
        authority: str,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        json: Any,
    ) -> None:
        body = b"" if json is None else jsonlib.dumps(json).encode()
        fields = {"host": authority, "accept": "text/event-stream", "connection": "close"}
        if json is not None:
            fields["content-type"] = "application/json"
        if body or method.upper() in {"POST", "PUT", "PATCH"}:
            fields["content-length"] = str(len(body))
        fields.update({k.lower(): v for k, v in (headers or {}).items()})
        head = f"{method.upper()} {path} HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self._writer.write(head.encode("latin-1") + b"\r\n" + body)
        await self._writer.drain()

    async def _read_head(self, method: str) -> None:
        while (end := self._raw.find(b"\r\n\r\n")) < 0:
            if not await self._read_raw():
                raise IncompleteBody("connection closed before the response headers")
        head = bytes(self._raw[:end]).decode("latin-1")
        rest = bytes(self._raw[end + 4 :])
        self._raw.clear()
        status_line, *lines = head.split("\r\n")
        _, status, *reason = status_line.split(" ", 2)
        self.status, self.reason = int(status), "".join(reason)
        for line in lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        self._decoder = self._make_decoder(method)
        self._body_done = self._decoder.done
        self._accept(rest)

    def _make_decoder(self, method: str) -> BodyDecoder:
        if method.upper() == "HEAD" or self.status in _NO_BODY_STATUSES:
            return BodyDecoder("length", 0)
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return BodyDecoder("chunked")
        if "content-length" in self.headers:
            return BodyDecoder("length", int(self.headers["content-length"]))
        return BodyDecoder("close")

    async def _read_raw(self) -> bool:
        try:
            data = await self._reader.read(_READ_SIZE)
        except ConnectionError as exc:
            raise IncompleteBody(f"connection broke: {exc!r}") from exc
        self._raw += data
        return bool(data)

    async def _read_body_bytes(self) -> None:
        if self._body_done:
            return
        if not await self._read_raw():
            if self._decoder.mode != "close":
                raise IncompleteBody("connection closed before the body was complete")
            self._body_done = True
            return
        data = bytes(self._raw)
        self._raw.clear()
        self._accept(data)

    def _accept(self, data: bytes) -> None:
        if data and not self._body_done:
            self._body += self._decoder.feed(data)
            self._body_done = self._decoder.done

    def _parse_pending(self) -> None:
        chunk = bytes(self._body)
        self._body.clear()
        for item in self._parser.feed(chunk):
            if isinstance(item, SSEComment):
                self.comments.append(item.text)
            else:
                self._events.append(item)


def _host_port(target: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(target, tuple):
        return target
    parts = urlsplit(target if "//" in target else f"//{target}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"need host and port in {target!r}")
    return parts.hostname, parts.port
