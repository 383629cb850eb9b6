"""`ListenerWatch`: start the drain when the server stops listening, whatever told it to.

Some shutdowns send no signal the process can see: uvicorn's ``--limit-max-requests``, and a
gunicorn worker recycled by ``--max-requests`` (the uvicorn worker hands the limit to uvicorn),
stop serving on their own, then wait for every connection to close before the lifespan
shutdown, which an open event stream never does. What every server does first when it shuts
down is close its listening socket. So, from the first request on, the watch remembers the
listening sockets of this process on the port that request came in by (``scope["server"]``),
and looks every tenth of a second whether they are still open (one ``fstat`` each): once
none is, the drain starts.

Where open file descriptors cannot be listed (neither ``/proc/self/fd`` nor ``/dev/fd``), the
watch does nothing: signals and the lifespan shutdown still start the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING

from .._tasks import detached

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["ListenerWatch", "listening_sockets"]

log = logging.getLogger("streaming_mw.drain")

_FD_DIRS = ("/proc/self/fd", "/dev/fd")
_INTERVAL = 0.1


def _open_fds() -> list[int]:
    for path in _FD_DIRS:
        with contextlib.suppress(OSError):
            return sorted(int(name) for name in os.listdir(path) if name.isdigit())
    return []


def _listens_on(fd: int, where: tuple[str, int | None]) -> bool:
    """``fd`` is a listening socket bound to the port (or unix path) ``where`` names."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        name = sock.getsockname()
    except OSError:
        return False
    finally:
        sock.detach()  # the server's socket: never closed here
    host, port = where
    if isinstance(name, tuple):  # AF_INET, AF_INET6: the host differs when bound to 0.0.0.0
        return port is not None and name[1] == port
    return port is None and name == host  # AF_UNIX: scope["server"] is (path, None)


def listening_sockets(where: tuple[str, int | None]) -> list[tuple[int, int]]:
    """``(fd, inode)`` of each listening socket of this process on ``where``'s port."""
    found = []
    for fd in _open_fds():
        if _listens_on(fd, where):
            with contextlib.suppress(OSError):
                found.append((fd, os.fstat(fd).st_ino))
    return found


def _still_open(fd: int, inode: int) -> bool:
    try:
        return os.fstat(fd).st_ino == inode  # a reused fd number is another inode
    except OSError:
        return False


class ListenerWatch:
    """Calls ``begin`` once the listening sockets it found are all closed."""

    def __init__(self, begin: Callable[[], object], interval: float = _INTERVAL) -> None:
        self.begin = begin
        self.interval = interval
        self.sockets: list[tuple[int, int]] = []
        self._task: asyncio.Task[None] | None = None

    def track(self, server: Sequence[object] | None) -> bool:
        """Find the listeners behind ``scope["server"]`` and start watching them (once)."""
        if self._task is not None or server is None or len(server) != 2:
            return False
        host, port = server
        if not isinstance(host, str) or not (port is None or isinstance(port, int)):
            return False
        self.sockets = listening_sockets((host, port))
        if not self.sockets:
            return False
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="streaming_mw.listener-watch", context=detached()
        )
        return True

    async def _watch(self) -> None:
        while True:  # polling: nothing signals the close of a socket someone else holds
            if not any(_still_open(fd, inode) for fd, inode in self.sockets):
                break
            await asyncio.sleep(self.interval)
        log.info("streaming_mw: the server closed its listening socket: draining")
        self.begin()

    def stop(self) -> None:
        """Stop watching (the lifespan shutdown came)."""
        if self._task is not None:
            self._task.cancel()
