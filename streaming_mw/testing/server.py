"""A real uvicorn server in a background thread, for streams that never end by themselves."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._asgi import ASGIApp

__all__ = ["serve_in_thread"]


@contextmanager
def serve_in_thread(app: ASGIApp, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` (lifespan on) with uvicorn on ``127.0.0.1`` and a free port; yield its
    base URL (``http://127.0.0.1:<port>``); stop it on exit.

    Unlike ``httpx.ASGITransport``, a real server sends each chunk as it is written, so a
    client can read the first events of an endless stream and disconnect. Needs ``uvicorn``.
    Fails with `AssertionError` (like a failed test) when the server does not start.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        ws="none",  # event streams need no WebSocket stack (and old ones warn on import)
        log_level="warning",
        access_log=False,
    )
    config.timeout_graceful_shutdown = 2
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name="streaming_mw.testing.server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout)
            raise AssertionError(f"uvicorn did not start: {errors[0] if errors else 'timeout'}")
        thread.join(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
