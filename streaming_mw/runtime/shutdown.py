"""Starting the shutdown drain of a container, and telling whether it started.

`start_drain` is the server-agnostic entry point (server hooks, admin routes); the middleware
also chains `install_signal_hooks` in front of the server's SIGTERM/SIGINT handlers at
lifespan startup, watches the server's listening socket from the first request on (a server
that stops on its own, e.g. at ``--max-requests``, sends no signal: see `ListenerWatch`), and
starts the drain at lifespan shutdown as the last resort. What the drain
does is `Drain`'s (``runtime/drain.py``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..config import load_settings
from .container import current_container
from .drain import DEFAULT_DRAIN_TIMEOUT, SignalHook
from .listeners import ListenerWatch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .container import StreamingContainer
    from .drain import Drain

__all__ = [
    "drain_timeout",
    "install_signal_hooks",
    "is_draining",
    "start_drain",
    "uninstall_signal_hooks",
]


def drain_timeout(container: StreamingContainer) -> float:
    """``ChannelConfig.drain_timeout``, else ``STREAMING_DRAIN_TIMEOUT``, else 5 s."""
    configured: float | None = container.options().channel.drain_timeout
    if configured is not None:
        return configured
    return load_settings().streaming_drain_timeout or DEFAULT_DRAIN_TIMEOUT


def is_draining(container: StreamingContainer | None = None) -> bool:
    """True once this process started to shut down (see `start_drain`)."""
    drain: Drain = (container or current_container()).runtime().drain
    return drain.draining


def start_drain(container: StreamingContainer | None = None) -> asyncio.Task[None]:
    """Start draining now, on the running event loop: for server hooks and admin routes.

    Idempotent; returns the task that ends the open streams (await it to wait for them).
    """
    container = container or current_container()
    drain: Drain = container.runtime().drain
    return drain.start(drain_timeout(container))


def install_signal_hooks(
    container: StreamingContainer,
) -> Callable[[Sequence[object] | None], None]:
    """Start the drain on SIGTERM/SIGINT, before the server's own handler runs.

    Returns what the middleware calls on the first request, with its ``scope["server"]``: it
    installs the hooks again where they were replaced (a server that sets its handlers after
    the lifespan startup, Hypercorn, replaced ours) and starts a `ListenerWatch` on the socket
    the request came by. `uninstall_signal_hooks` undoes all of it.
    """
    runtime = container.runtime()
    hook = runtime.signal_hook
    if hook is None:
        hook = SignalHook(asyncio.get_running_loop(), lambda: start_drain(container))
        runtime.signal_hook = hook
    hook.install()

    def first_request(server: Sequence[object] | None) -> None:
        hook.install()
        if runtime.listener_watch is None:
            runtime.listener_watch = ListenerWatch(lambda: start_drain(container))
            runtime.listener_watch.track(server)

    return first_request


def uninstall_signal_hooks(container: StreamingContainer) -> None:
    """Undo `install_signal_hooks` (at lifespan shutdown)."""
    runtime = container.runtime()
    hook, runtime.signal_hook = runtime.signal_hook, None
    if hook is not None:
        hook.uninstall()
    watch, runtime.listener_watch = runtime.listener_watch, None
    if watch is not None:
        watch.stop()
