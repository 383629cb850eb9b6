"""`DaemonThreadPool`: the bounded thread pool sync `sse_response` workers run on.

A `ThreadPoolExecutor`'s threads are joined when the interpreter exits, so one sync worker
that never looks at ``emitter.cancelled`` (a blocking call, a loop that ignores it) would hold
the process after its shutdown until it returns: past the drain deadline, or for ever. A thread
cannot be cancelled; this pool's threads are daemon threads, which the exit does not wait for.
The runner ends the stream of such a worker visibly (``error {reason: "shutdown"}``) and lets
the process go.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DaemonThreadPool"]

P = ParamSpec("P")
T = TypeVar("T")

_Item = tuple["Future[Any]", "Callable[[], Any]"]


class DaemonThreadPool(Executor):
    """At most ``size`` daemon threads, started on demand, fed from one queue."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Threads running a call now."""
        return self._busy

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put((future, lambda: fn(*args, **kwargs)))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            if future.set_running_or_notify_cancel():
                with self._lock:
                    self._busy += 1
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                finally:
                    with self._lock:
                        self._busy -= 1
            del item, future, call
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` drops the queued ones. Running calls go on (they
        cannot be stopped); ``wait`` waits for them."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                with contextlib.suppress(queue.Empty):
                    while (item := self._queue.get_nowait()) is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
