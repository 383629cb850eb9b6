"""What the current task is producing, for code below the web edge (no I/O).

A ContextVar, so it follows a worker or job into every task and thread it starts
(`asyncio` copies the context; the worker runner copies it into its threads).
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_stream"]

current_stream: ContextVar[str | None] = ContextVar("streaming_mw.current_stream", default=None)
"""The stream a worker or job is producing in this context (log shipping tags records with it)."""
