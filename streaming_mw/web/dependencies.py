"""FastAPI dependencies and exception handlers: the edge where FastAPI meets the library."""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from fastapi import Depends, Request
from starlette.responses import Response

from ..emitters import DeploymentEmitter
from ..errors import ConfigurationError, StreamLimitExceeded
from ..runtime.container import current_container
from ..runtime.startup import ensure_started
from .context import current_request
from .lease import acquire_lease
from .middleware import limit_exceeded_response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import FastAPI

    from ..leases.base import Lease

log = logging.getLogger("streaming_mw")

__all__ = [
    "add_exception_handlers",
    "get_emitter",
    "lease_dependency",
    "stream_limit_exceeded_handler",
    "streaming_identity",
]


async def streaming_identity() -> str | None:
    """Who is asking: the owner `get_emitter` gives new streams. ``None`` by default.

    Point it at the app's own user dependency::

        app.dependency_overrides[streaming_identity] = current_user_id
    """
    return None


_warned_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def _warn_if_no_identity(request: Request) -> None:
    """Once per app: `get_emitter` makes public streams because no identity is configured."""
    app = request.scope.get("app")
    overrides = getattr(app, "dependency_overrides", None)
    if app is None or overrides is None or streaming_identity in overrides:
        return
    if app not in _warned_apps:
        _warned_apps.add(app)
        log.warning(
            "streaming_mw: no streaming_identity is configured, so the streams get_emitter "
            "creates are public: anyone who learns an id may follow it. Set "
            "app.dependency_overrides[streaming_identity] to your user dependency "
            "(docs/security.md)."
        )


async def get_emitter(
    request: Request, owner: Any = Depends(streaming_identity)
) -> DeploymentEmitter:
    """A fresh `DeploymentEmitter` bound to the container's channel, owned by the caller
    (`streaming_identity`). Without a configured identity the stream is public, and the first
    such stream of an app logs a warning."""
    if owner is None:
        _warn_if_no_identity(request)
    container = current_container()
    await ensure_started(container)
    return DeploymentEmitter(
        container.stream_channel(), owner=None if owner is None else str(owner)
    )


def lease_dependency(
    identity: Callable[..., Any],
    *,
    limit: int | None = None,
    ttl_seconds: float | None = None,
    wait: float | None = None,
) -> Callable[..., Awaitable[Lease]]:
    """A dependency that holds a stream lease for as long as the response lives.

    ``identity`` is the app's own dependency returning the user (its ``str()`` is the user id)::

        @app.get("/chat/stream")
        async def chat(lease: Lease = Depends(lease_dependency(current_user_id))): ...

    At the limit it waits up to ``wait`` seconds (default: `StreamLeaseConfig.wait_seconds`)
    for a slot, then raises `StreamLimitExceeded`, which `StreamingMiddleware` answers with
    ``429`` and ``Retry-After``.
    """

    async def hold_stream_lease(user: Any = Depends(identity)) -> Lease:
        request = current_request.get()
        if request is None:
            raise ConfigurationError(
                "lease_dependency needs StreamingMiddleware: "
                "app.add_middleware(StreamingMiddleware)"
            )
        lease = await acquire_lease(
            request.container,
            str(user),
            limit=limit,
            ttl_seconds=ttl_seconds,
            wait=wait,
            request=request,
        )
        request.adopt(lease)
        return lease

    return hold_stream_lease


async def stream_limit_exceeded_handler(request: Request, exc: Exception) -> Response:
    """Answer `StreamLimitExceeded` with ``429 Too Many Requests`` and ``Retry-After``."""
    if not isinstance(exc, StreamLimitExceeded):
        raise exc
    body, retry_after = limit_exceeded_response(exc)
    return Response(
        body, status_code=429, headers={"retry-after": retry_after}, media_type="application/json"
    )


def add_exception_handlers(app: FastAPI) -> None:
    """Register `stream_limit_exceeded_handler` on ``app``."""
    app.add_exception_handler(StreamLimitExceeded, stream_limit_exceeded_handler)
