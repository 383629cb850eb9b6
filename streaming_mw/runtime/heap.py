"""Keeping the startup heap out of the collector's full passes (`freeze_startup_heap`).

Before it serves, a web process imports its framework, builds its app and starts the container:
a few hundred thousand objects that live as long as the process. CPython's full collection
walks every one of them whenever it runs, and it runs once enough objects have survived since
the last one: a pause of tens of milliseconds in the middle of someone's stream (62 ms in
``python -m bench.queue_hops --mode redis --events 200 --no-freeze``, see the configuration
page, ``freeze_startup_heap``). So once the container has started, the
collector runs once and every object alive then moves to the permanent generation
(`gc.freeze`): later full passes walk only what came after.

Turned on by ``ChannelConfig(freeze_startup_heap=True)``; once per process (a second container,
or a restart, changes nothing). A startup object that becomes cyclic garbage later is never
reclaimed: fine for an app's modules, routes and container, which live until exit. Frozen
objects are hidden from `gc.get_objects` and `gc.get_referrers` (which is why it is not the
default: some debugging and test tools rely on them).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

__all__ = ["freeze_startup_heap"]

log = logging.getLogger("streaming_mw.runtime")

_lock = threading.Lock()
_frozen = False


def freeze_startup_heap() -> bool:
    """Collect, then freeze every object alive now, once per process; True if this call did."""
    global _frozen
    with _lock:
        if _frozen or not gc.isenabled():
            return False  # done already, or the app runs the collector itself
        _frozen = True
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug(
        "streaming_mw: %d startup objects frozen out of full collections (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )
    return True
