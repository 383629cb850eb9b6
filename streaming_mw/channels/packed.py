"""`PackedAppender`: a synchronous client's marked appends, sent as one packed ``EVALSHA`` on a
connection held for appends.

A worker thread's event waits for its append before it reaches anyone, so the Python run before
the command leaves is on every event's path. redis-py's generic path runs the script wrapper,
encodes the command's 12 arguments one by one and checks a connection out of the pool (a
``select`` on the socket, a lock, its metrics) and back in: ``python -m bench.queue_hops --mode
redis --common --floor`` saw the command reach the socket 0.098 ms after the worker's timestamp,
against 0.039 ms for the floor's ``PUBLISH``. Here the command is packed in one C call
(hiredis) and sent on a connection this appender keeps between appends (0.035 ms).

Only appends with a `ProducerMark` come this way: the mark makes sending the same command again
safe, so a connection that turns out dead (the server restarted, closed an idle client) is
replaced and the append sent once more, as redis-py's own retry would. The connections come from
the client's pool, and at most ``limit`` of them are held; an append that finds all of them busy
takes redis-py's path instead, so the pool's other users never wait for held connections.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, TypeAlias

import hiredis
from redis import exceptions as redis_exceptions

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis
    from redis.connection import ConnectionPool

Connection: TypeAlias = Any
"""A redis-py ``Connection`` (its methods are not typed)."""

__all__ = ["PackedAppender"]

_RETRIED = (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError, OSError)
"""A connection failed: replace it and send again (once)."""


class PackedAppender:
    """Runs one script (``EVALSHA``) with packed arguments on connections held for it."""

    def __init__(self, client: redis.Redis, script: str, sha: str, *, limit: int = 8) -> None:
        self._pool: ConnectionPool = client.connection_pool
        self._script = script
        self._sha = sha
        self._limit = limit
        self._idle: list[Connection] = []
        self._held = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    @classmethod
    def usable(cls, client: redis.Redis) -> bool:
        """A client this appender can serve: one node through its pool, not a
        single-connection client (a cluster client is not a `redis.Redis`)."""
        return client.connection is None

    def run(self, keys: Sequence[str], args: Sequence[str | bytes | int]) -> object:
        """The script's answer; None when no connection was free (use redis-py's path).
        Raises redis-py's errors (``ResponseError``, ``ConnectionError``…)."""
        connection = self._take()
        if connection is None:
            return None
        try:
            return self._run(connection, (len(keys), *keys, *args))
        except redis_exceptions.ResponseError:
            raise  # the connection read the whole answer: it stays usable
        except BaseException:
            connection.disconnect()  # whatever was half sent or half read goes with it
            raise
        finally:
            self._give(connection)

    def _run(self, connection: Connection, arguments: tuple[str | bytes | int, ...]) -> object:
        # One more send after a dead connection (reconnected: the server may have restarted,
        # and lost its scripts too), one after loading the script.
        sha = self._sha
        packed = hiredis.pack_command((b"EVALSHA", sha, *arguments))  # type: ignore[arg-type]
        retried = loaded = False
        while True:
            try:
                return self._send(connection, packed)
            except _RETRIED:
                connection.disconnect()
                if retried:
                    raise
                retried = True
            except redis_exceptions.NoScriptError:
                if loaded:
                    raise
                self._load(connection)
                loaded = True
                if self._sha != sha:
                    sha = self._sha
                    packed = hiredis.pack_command((b"EVALSHA", sha, *arguments))  # type: ignore[arg-type]

    def close(self) -> None:
        """Give every held connection back to the pool; appends after this take redis-py's
        path."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._held -= len(idle)
        for connection in idle:
            self._pool.release(connection)

    def _send(self, connection: Connection, packed: bytes) -> object:
        connection.send_packed_command((packed,), check_health=False)
        return connection.read_response()

    def _load(self, connection: Connection) -> None:
        # The server lost its scripts (restarted, SCRIPT FLUSH): load ours again.
        connection.send_command("SCRIPT", "LOAD", self._script)
        sha = connection.read_response()
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)

    def _take(self) -> Connection | None:
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
            self._forked()
        with self._lock:  # not a bare pop: `close` must never hand back one in use
            if self._idle:
                return self._idle.pop()
            if self._closed or self._held >= self._limit:
                return None
            self._held += 1
        try:
            return self._pool.get_connection()
        except BaseException:
            with self._lock:
                self._held -= 1
            raise

    def _give(self, connection: Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
            self._held -= 1
        self._pool.release(connection)

    def _forked(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._idle, self._held = [], 0
