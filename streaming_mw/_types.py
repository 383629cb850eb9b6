"""Shared type aliases and small validators (no I/O, no imports from the rest of the package
except the error tree)."""

from __future__ import annotations

import re
import secrets
from typing import TypeAlias

from .errors import InvalidFieldError, InvalidStreamIdError, InvalidUserIdError

__all__ = ["JSONValue", "check_sse_field", "check_user_id", "random_id", "validate_stream_id"]

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"
"""A value `orjson`/`json` can serialise."""

_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_FORBIDDEN = ("\r", "\n", "\0")


def random_id() -> str:
    """128 random bits, URL-safe (22 characters), never starting with ``-``: a command line
    would take such an id for an option (``streaming-mw jobs show -x…``)."""
    while True:
        token = secrets.token_urlsafe(16)
        if token[0] != "-":
            return token


def check_sse_field(field: str, value: str) -> str:
    """Return ``value`` if it can stand on one SSE field line, else raise `InvalidFieldError`.

    CR and LF would end the line early and let the rest of the value forge new fields; NUL makes
    browsers ignore an ``id`` field. An empty event name is refused because it means "message".
    """
    # Printable text has none of the three: the common case costs one scan in C.
    if not value.isprintable() and ("\r" in value or "\n" in value or "\0" in value):
        for char, name in zip(_FORBIDDEN, ("CR", "LF", "NUL"), strict=True):
            if char in value:
                raise InvalidFieldError(field, value, f"must not contain {name}")
    if field == "event" and not value:
        raise InvalidFieldError(field, value, "must not be empty")
    return value


def validate_stream_id(stream_id: str) -> str:
    """Return ``stream_id`` if it is 1-128 characters of ``[A-Za-z0-9_-]``.

    Stream ids end up inside Redis keys (``{<id>}`` hash tags) and HTTP headers, so the
    alphabet is closed: no braces, separators or whitespace.
    """
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise InvalidStreamIdError(
            f"stream id must be 1-128 characters of [A-Za-z0-9_-], got {_shown(stream_id)}"
        )
    return stream_id


_MAX_USER_ID = 256


def check_user_id(user_id: str) -> str:
    """Return ``user_id`` if it is a non-empty string of at most 256 characters."""
    if not isinstance(user_id, str) or not user_id or len(user_id) > _MAX_USER_ID:
        raise InvalidUserIdError(
            f"user_id must be a non-empty string of at most 256 characters, got {_shown(user_id)}"
        )
    return user_id


def _shown(value: object) -> str:
    """A short, quoted view of a rejected value (an error message may reach the client)."""
    if not isinstance(value, str):
        return type(value).__name__
    if len(value) <= 32:
        return repr(value)
    return f"{value[:32]!r}… ({len(value)} characters)"
