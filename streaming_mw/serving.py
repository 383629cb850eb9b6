"""Serve an app so that a client which vanishes (no FIN, no RST) is noticed within seconds.

A phone that leaves Wi-Fi or a laptop whose lid closes just stops answering. The server's
writes go into the kernel's send buffer and are retransmitted for about 15 minutes
(``tcp_retries2``) before the connection is declared dead; until then the stream, its lease and
its follower stay. Pings cannot help: a ping counts as sent once it is in the buffer.

``TCP_USER_TIMEOUT`` bounds how long sent data may stay unacknowledged before the kernel drops
the connection, and TCP keepalive probes a connection that has nothing to send. Set on the
listening socket, both are inherited by every accepted connection (Linux). Then the server's
next write fails, and `StreamingMiddleware` releases the stream's lease.

- uvicorn: ``streaming-mw serve myapp:app --port 8000`` (or `run` from Python) creates such a
  socket and hands it to uvicorn.
- gunicorn: ``when_ready = streaming_mw.serving.gunicorn_when_ready`` in the gunicorn config
  file applies the same options to its listeners before the workers start.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KeepAlive",
    "gunicorn_when_ready",
    "listening_socket",
    "protect_socket",
    "run",
]

log = logging.getLogger("streaming_mw")


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """How a silent peer is detected: unacknowledged data is given up after ``user_timeout``
    seconds; an idle connection is probed after ``idle`` seconds, every ``interval`` seconds,
    and dropped after ``count`` unanswered probes."""

    user_timeout: float = 20.0
    idle: int = 10
    interval: int = 5
    count: int = 3


def protect_socket(sock: socket.socket, keepalive: KeepAlive | None = None) -> bool:
    """Set keepalive and (on Linux) ``TCP_USER_TIMEOUT`` on ``sock``; False where the platform
    lacks ``TCP_USER_TIMEOUT`` (keepalive is still set)."""
    options = keepalive or KeepAlive()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", options.idle),
        ("TCP_KEEPINTVL", options.interval),
        ("TCP_KEEPCNT", options.count),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is None:
        return False
    sock.setsockopt(socket.IPPROTO_TCP, user_timeout, round(options.user_timeout * 1000))
    return True


def listening_socket(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    keepalive: KeepAlive | None = None,
    backlog: int = 2048,
) -> socket.socket:
    """A bound, listening TCP socket whose accepted connections detect a vanished peer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not protect_socket(sock, keepalive):
            log.warning("streaming_mw: TCP_USER_TIMEOUT is not available on %s", sys.platform)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def run(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    keepalive: KeepAlive | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` (an ASGI app or an ``"module:attribute"`` string) with uvicorn on a
    protected socket. ``uvicorn_options`` go to ``uvicorn.Config``."""
    import uvicorn

    sock = listening_socket(host, port, keepalive=keepalive)
    log.info(
        "streaming_mw: serving on %s:%d, a vanished client is dropped after %.0fs",
        host,
        port,
        (keepalive or KeepAlive()).user_timeout,
    )
    try:
        uvicorn.Server(uvicorn.Config(app, **uvicorn_options)).run(sockets=[sock])
    finally:
        sock.close()


def gunicorn_when_ready(server: Any) -> None:
    """gunicorn's ``when_ready`` hook: protect every listener before workers accept on it."""
    for listener in getattr(server, "LISTENERS", ()):
        sock = getattr(listener, "sock", None)
        if isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM:
            protect_socket(sock)
