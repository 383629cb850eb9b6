"""The one error tree of streaming_mw.

Every exception the library raises on purpose derives from :class:`StreamingError`, so
``except StreamingError`` catches all of them. Errors about bad caller input also derive
from :class:`ValueError`, so code written against the standard library keeps working::

    StreamingError
    ├── ConfigurationError (ValueError)        an option or environment value is invalid
    ├── InvalidEventError (ValueError)         an event cannot be framed safely
    │   ├── InvalidFieldError                  CR, LF or NUL in `event`/`id`; empty event name
    │   └── EventTooLargeError                 serialised event over the configured maximum
    ├── InvalidInputError (ValueError)         a value from the request is invalid: answered 400
    │   ├── InvalidCursorError                 malformed `Last-Event-ID` / stream cursor
    │   ├── InvalidStreamIdError               stream id with characters outside [A-Za-z0-9_-]
    │   ├── InvalidUserIdError                 empty or over-long user id
    │   └── PayloadTooLargeError               job payload over `max_payload_bytes`: answered 413
    ├── BackendUnavailableError                Redis (or another backend) cannot be reached
    │   └── DrainingError                      the process is shutting down: no new streams
    ├── StreamNotFoundError (LookupError)      no stream with that id (or it expired)
    ├── StreamAccessDeniedError (PermissionError)  the stream belongs to another user
    ├── StreamClosedError                      publishing to a stream that already ended
    ├── StreamExistsError                      a new stream's id is taken: answered 409
    ├── SlowConsumerError                      a follower fell too far behind and was cut off
    └── LeaseError                             stream lease problems
        ├── StreamLimitExceeded                `limit` of the user or `global_limit` of all
        │                                      users reached (`scope` says which)
        └── LeaseLost                          refreshed a lease that expired and was dropped
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "DrainingError",
    "EventTooLargeError",
    "InvalidCursorError",
    "InvalidEventError",
    "InvalidFieldError",
    "InvalidInputError",
    "InvalidStreamIdError",
    "InvalidUserIdError",
    "LeaseError",
    "LeaseLost",
    "PayloadTooLargeError",
    "SlowConsumerError",
    "StreamAccessDeniedError",
    "StreamClosedError",
    "StreamExistsError",
    "StreamLimitExceeded",
    "StreamNotFoundError",
    "StreamingError",
]


class StreamingError(Exception):
    """Root of every error streaming_mw raises on purpose."""


class ConfigurationError(StreamingError, ValueError):
    """An option object or environment variable holds an invalid value."""


class InvalidEventError(StreamingError, ValueError):
    """An event cannot be encoded without breaking the SSE framing."""


class InvalidFieldError(InvalidEventError):
    """An `event` or `id` field contains CR, LF or NUL, or an event name is empty."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"SSE field {field!r} {reason}: {value!r}")


class EventTooLargeError(InvalidEventError):
    """The serialised event is larger than the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"event of {size} bytes exceeds the maximum of {limit} bytes")


class InvalidInputError(StreamingError, ValueError):
    """A value that came with the request (an id, a cursor, a payload) is invalid.

    `StreamingMiddleware` answers one that the app does not handle with ``400`` and a JSON
    body, before the response starts, and logs one line without a traceback.
    """


class InvalidCursorError(InvalidInputError):
    """A `Last-Event-ID` or cursor string is not of the form ``<epoch>-<seq>``."""


class InvalidStreamIdError(InvalidInputError):
    """A stream id is empty, too long, or uses characters outside ``[A-Za-z0-9_-]``."""


class InvalidUserIdError(InvalidInputError):
    """A user id is empty, not a string, or longer than 256 characters."""


class PayloadTooLargeError(InvalidInputError):
    """A job payload is larger than ``QueueConfig.max_payload_bytes``; nothing was stored.

    `StreamingMiddleware` answers it with ``413``.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"job payload of {size} bytes exceeds the maximum of {limit} bytes")


class BackendUnavailableError(StreamingError):
    """A backend (Redis) could not be reached or stopped answering."""


class DrainingError(BackendUnavailableError):
    """The process is draining for shutdown and takes no new stream (answered ``503``; the
    client retries, and reaches another process)."""


class StreamNotFoundError(StreamingError, LookupError):
    """No stream with that id exists (never created, or its history expired)."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"no stream {stream_id!r}")


class StreamAccessDeniedError(StreamingError, PermissionError):
    """The stream belongs to another user (`cancel_stream` by someone not its owner)."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} belongs to another user")


class StreamClosedError(StreamingError):
    """The stream already ended with a terminal event; nothing more can be published."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} already ended")


class StreamExistsError(StreamingError):
    """A stream with that id already exists, running or ended, whoever owns it: a new stream
    (`resumable_response` with a ``stream_id``) cannot take it over (answered ``409``)."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} already exists")


class SlowConsumerError(StreamingError):
    """A follower's bounded queue overflowed; it must resume from its cursor."""


class LeaseError(StreamingError):
    """Base class of stream lease errors."""


class StreamLimitExceeded(LeaseError):
    """No slot is free: the user already holds ``limit`` streams (``scope == "user"``), or all
    users together hold the ``global_limit`` (``scope == "global"``; ``limit`` is then the
    global limit)."""

    def __init__(
        self,
        user_id: str,
        limit: int,
        retry_after: float,
        scope: Literal["user", "global"] = "user",
    ) -> None:
        self.user_id = user_id
        self.limit = limit
        self.retry_after = retry_after
        self.scope: Literal["user", "global"] = scope
        held = (
            f"user {user_id!r} already holds {limit}"
            if scope == "user"
            else f"all users together already hold the global limit of {limit}"
        )
        super().__init__(f"{held} concurrent stream(s); retry after {retry_after:.1f}s")


class LeaseLost(LeaseError):
    """A lease expired and was dropped before it could be refreshed; it is not re-added."""

    def __init__(self, user_id: str, lease_id: str) -> None:
        self.user_id = user_id
        self.lease_id = lease_id
        super().__init__(f"lease {lease_id!r} of user {user_id!r} expired or was released")
