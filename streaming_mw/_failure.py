"""What a client may learn of a failure on the server: by default an id to quote to support, not
the exception's text (which can name hosts, paths, SQL or other users' data)."""

from __future__ import annotations

import secrets

__all__ = ["failure_details", "new_error_id"]


def new_error_id() -> str:
    """A short random id that ties an ``error`` event to its log line and span."""
    return secrets.token_hex(6)


def failure_details(exc: BaseException, error_id: str, *, expose: bool) -> dict[str, str]:
    """The fields an ``error`` event carries about ``exc``: ``reason`` ``internal_error`` and
    the ``error_id``; with ``expose`` (development) also its ``type`` and ``detail`` text."""
    details = {"reason": "internal_error", "error_id": error_id}
    if expose:
        details["type"] = type(exc).__name__
        details["detail"] = str(exc)
    return details
