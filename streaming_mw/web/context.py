"""The request being handled. It survives into streaming bodies because the middleware is pure
ASGI: the response runs in the request's task or in child tasks that copy its context."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracking import RequestStreams

__all__ = ["current_request"]

current_request: ContextVar[RequestStreams | None] = ContextVar(
    "streaming_mw.current_request", default=None
)
"""The request the middleware is handling in this context, if any."""
