"""Drive an ASGI app with scripted ``receive``/``send``, chunk by chunk.

Unlike ``httpx.ASGITransport`` nothing is buffered: a test reads each
``http.response.body`` message as the app sends it, so endless streams work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from streaming_mw.sse import SSEComment, SSEEvent, SSEParser

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from starlette.types import ASGIApp, Message, Scope

SpecVersion = Literal["2.3", "2.4"]

CLIENT_ADDR = ("127.0.0.1", 50123)
SERVER_ADDR = ("testserver", 80)


class IncompleteResponse(Exception):
    """The app task ended before it completed the response; ``__cause__`` is its error."""


class LifespanError(Exception):
    """Lifespan startup or shutdown failed."""


class AsgiResponse:
    """One request in flight: the app's side of the connection and what it sent.

    Under spec 2.3 ``disconnect()`` makes ``receive()`` return ``http.disconnect``
    and later sends are ignored. Under 2.4 ``receive()`` never returns after the
    request body, and every ``send()`` after ``disconnect()`` raises ``OSError``.
    """

    def __init__(self, spec_version: SpecVersion, body: bytes) -> None:
        self.spec_version = spec_version
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.comments: list[str] = []
        self._request_body: bytes | None = body
        self._disconnected = asyncio.Event()
        self._started = False
        self._complete = False
        self._eof = False
        self._chunks: collections.deque[bytes | None] = collections.deque()
        self._events: collections.deque[SSEEvent] = collections.deque()
        self._parser = SSEParser()
        self._changed = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    @property
    def finished(self) -> bool:
        """The app task has ended (returned, raised or was cancelled)."""
        return self._task is not None and self._task.done()

    @property
    def cancelled(self) -> bool:
        """The app task ended by cancellation."""
        return self._task is not None and self._task.cancelled()

    @property
    def exception(self) -> BaseException | None:
        """What the app raised, or None while running, on success or when cancelled."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    @property
    def disconnected(self) -> bool:
        """``disconnect()`` was called."""
        return self._disconnected.is_set()

    def header(self, name: str) -> str | None:
        """The first response header called ``name`` (case-insensitive), decoded."""
        key = name.lower().encode("latin-1")
        for header_name, value in self.headers:
            if header_name.lower() == key:
                return value.decode("latin-1")
        return None

    def disconnect(self) -> None:
        """The client goes away now."""
        self._disconnected.set()
        self._changed.set()

    async def read_chunk(self, timeout: float = 5.0) -> bytes:
        """The next non-empty body chunk; ``EOFError`` once the body is complete."""
        async with asyncio.timeout(timeout):
            return await self._next_chunk()

    async def read_event(self, timeout: float = 5.0) -> SSEEvent:
        """The next SSE event of the body; comments are collected in ``comments``."""
        async with asyncio.timeout(timeout):
            while not self._events:
                self._parse(await self._next_chunk())
            return self._events.popleft()

    async def read_all(self, timeout: float = 5.0) -> bytes:
        """The rest of the body, up to the message with ``more_body`` false."""
        parts: list[bytes] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    parts.append(await self._next_chunk())
                except EOFError:
                    return b"".join(parts)

    async def wait_finished(self, timeout: float = 5.0) -> None:
        """Wait until the app task has ended."""
        if self._task is None:
            raise RuntimeError("request not started")
        await asyncio.wait({self._task}, timeout=timeout)
        if not self._task.done():
            raise TimeoutError(f"app still running after {timeout}s")

    async def receive(self) -> Message:
        """The ASGI ``receive`` callable handed to the app."""
        if self._request_body is not None:
            body, self._request_body = self._request_body, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self.spec_version == "2.4":
            await asyncio.Event().wait()
        while not (self._disconnected.is_set() or self._complete):
            self._changed.clear()
            await self._changed.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """The ASGI ``send`` callable handed to the app."""
        if self._disconnected.is_set():
            if self.spec_version == "2.4":
                raise OSError("client disconnected")
            return
        kind = message["type"]
        if kind == "http.response.start":
            self._on_start(message)
        elif kind == "http.response.body":
            self._on_body(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        self._changed.set()

    def _on_start(self, message: Message) -> None:
        if self._started:
            raise RuntimeError("http.response.start sent twice")
        self._started = True
        self.status = int(message["status"])
        self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]

    def _on_body(self, message: Message) -> None:
        if not self._started:
            raise RuntimeError("http.response.body before http.response.start")
        if self._complete:
            raise RuntimeError("http.response.body after the response completed")
        body = bytes(message.get("body", b""))
        if body:
            self._chunks.append(body)
        if not message.get("more_body", False):
            self._complete = True
            self._chunks.append(None)

    def _parse(self, chunk: bytes) -> None:
        for item in self._parser.feed(chunk):
            if isinstance(item, SSEComment):
                self.comments.append(item.text)
            else:
                self._events.append(item)

    async def _next_chunk(self) -> bytes:
        while True:
            if self._eof:
                raise EOFError("response body complete")
            if self._chunks:
                chunk = self._chunks.popleft()
                if chunk is not None:
                    return chunk
                self._eof = True
                continue
            self._raise_if_ended()
            self._changed.clear()
            await self._changed.wait()

    def _raise_if_ended(self) -> None:
        task = self._task
        if task is None or not task.done():
            return
        if task.cancelled():
            raise IncompleteResponse("app task was cancelled")
        raise IncompleteResponse("app returned before completing the response") from (
            task.exception()
        )

    def _attach(self, task: asyncio.Future[None]) -> None:
        self._task = task
        task.add_done_callback(lambda _: self._changed.set())

    async def _wait_started(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not self._started:
                self._raise_if_ended()
                self._changed.clear()
                await self._changed.wait()

    async def _shutdown(self, grace: float) -> None:
        task = self._task
        if task is None:
            return
        if not task.done():
            self.disconnect()
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            raise RuntimeError("app task ignored cancellation")
        if not task.cancelled():
            task.exception()


class AsgiClient:
    """Send HTTP requests straight to an ASGI app, as one server with one spec version."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        spec_version: SpecVersion = "2.3",
        state: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.spec_version = spec_version
        self.state = state

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes = b"",
        query_string: bytes = b"",
        start_timeout: float = 5.0,
        grace: float = 2.0,
    ) -> AsyncIterator[AsgiResponse]:
        """Run the app for one request and yield once it sent ``http.response.start``.

        On exit a still-running app is disconnected, given ``grace`` seconds to
        finish, then cancelled.
        """
        scope = self.scope(method, path, headers=headers, body=body, query_string=query_string)
        response = AsgiResponse(self.spec_version, body)
        response._attach(asyncio.ensure_future(self.app(scope, response.receive, response.send)))
        try:
            await response._wait_started(start_timeout)
            yield response
        finally:
            await response._shutdown(grace)

    def scope(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes = b"",
        query_string: bytes = b"",
    ) -> Scope:
        """The HTTP scope ``stream`` hands to the app; ``path`` may carry ``?query``."""
        raw_path, _, query = path.partition("?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": self.spec_version},
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("latin-1"),
            "query_string": query_string or query.encode("latin-1"),
            "root_path": "",
            "headers": _encode_headers(headers, body),
            "client": CLIENT_ADDR,
            "server": SERVER_ADDR,
        }
        if self.state is not None:
            scope["state"] = dict(self.state)
        return scope


def _encode_headers(
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None, body: bytes
) -> list[tuple[bytes, bytes]]:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items]
    names = {name for name, _ in encoded}
    if b"host" not in names:
        encoded.insert(0, (b"host", SERVER_ADDR[0].encode("latin-1")))
    if body and b"content-length" not in names:
        encoded.append((b"content-length", str(len(body)).encode("latin-1")))
    return encoded


@asynccontextmanager
async def lifespan(app: ASGIApp, *, timeout: float = 10.0) -> AsyncIterator[dict[str, Any]]:
    """Run the app's lifespan startup, yield its state dict, then run shutdown."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
    scope["state"] = state
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    try:
        await _lifespan_step(task, inbox, outbox, "startup", timeout)
        yield state
        await _lifespan_step(task, inbox, outbox, "shutdown", timeout)
        await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=timeout)
        if task.done() and not task.cancelled():
            task.exception()


async def _lifespan_step(
    task: asyncio.Future[None],
    inbox: asyncio.Queue[Message],
    outbox: asyncio.Queue[Message],
    step: Literal["startup", "shutdown"],
    timeout: float,
) -> None:
    inbox.put_nowait({"type": f"lifespan.{step}"})
    reply = asyncio.create_task(outbox.get())
    waiters: set[asyncio.Future[Any]] = {reply, task}
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if not reply.done():
        reply.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reply
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise LifespanError(f"lifespan {step} raised") from task.exception()
        raise LifespanError(f"no lifespan {step} reply within {timeout}s")
    message = reply.result()
    if message["type"] != f"lifespan.{step}.complete":
        raise LifespanError(f"lifespan {step} failed: {message.get('message', '')}")
