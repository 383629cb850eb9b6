"""Settings read from the environment, and the seed's option objects.

`StreamingSettings` reads the seed's environment variables. The option objects
(`StreamLeaseConfig`, `ChannelConfig`, `QueueRedisConfig`) are frozen value objects with the
seed's defaults; an invalid value raises `ConfigurationError` naming the field at construction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError

__all__ = [
    "ChannelConfig",
    "LeaseLostPolicy",
    "QueueRedisConfig",
    "StorageConfig",
    "StreamLeaseConfig",
    "StreamingMode",
    "StreamingSettings",
    "load_settings",
    "redact_url",
]

StreamingMode: TypeAlias = Literal["auto", "redis", "memory"]
LeaseLostPolicy: TypeAlias = Literal["end", "continue"]
"""What a stream whose lease was lost does: end with ``error {reason: "lease_lost"}``, or go
on without counting against the limit."""
"""``auto`` probes Redis and falls back to memory; ``redis`` fails without it; ``memory`` never
tries."""

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_KEY_PART = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class StreamingSettings(BaseSettings):
    """The environment, as the seed names it (``REDIS_URL``, ``OPENSEARCH_*``) plus
    ``STREAMING_MODE`` and ``STREAMING_REDIS_CLUSTER``. Build it with `load_settings` to get
    `ConfigurationError` on bad values."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    redis_url: str | None = None
    streaming_mode: StreamingMode = "auto"
    streaming_drain_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    streaming_redis_cluster: bool | None = None
    """Unset: ask the node whether it runs Redis Cluster; ``true``/``false`` for proxies that
    hide it."""
    opensearch_host: str | None = None
    opensearch_port: int = Field(default=9200, ge=1, le=65535)
    opensearch_use_ssl: bool = False
    opensearch_auth_type: Literal["none", "basic", "aws"] = "none"
    opensearch_username: str | None = None
    opensearch_password: SecretStr | None = None

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> object:
        if value in ("", None):
            return None
        _check_redis_url("REDIS_URL", value)
        return value


def load_settings() -> StreamingSettings:
    """Read `StreamingSettings` from the environment; bad values raise `ConfigurationError`
    naming the variable."""
    try:
        return StreamingSettings()
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(part) for part in err["loc"]).upper()
            + ": "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid streaming settings: {problems}") from None


def _fail(owner: object, name: str, value: object, expected: str) -> ConfigurationError:
    return ConfigurationError(f"{type(owner).__name__}.{name} must be {expected}, got {value!r}")


def _positive_int(owner: object, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(owner, name, value, "an integer >= 1")


def _positive_number(owner: object, name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _fail(owner, name, value, "a finite number > 0")


def _key_part(owner: object, name: str, value: object) -> None:
    if not isinstance(value, str) or not _KEY_PART.fullmatch(value):
        raise _fail(owner, name, value, "1-64 characters of [A-Za-z0-9_.:-]")


def _check_redis_url(name: str, url: object) -> None:
    if not isinstance(url, str) or urlsplit(url).scheme not in _REDIS_SCHEMES:
        shown = redact_url(url) if isinstance(url, str) else type(url).__name__
        raise ConfigurationError(
            f"{name} must be a redis://, rediss:// or unix:// URL, got {shown!r}"
        )


@dataclass(frozen=True, slots=True)
class StreamLeaseConfig:
    """Concurrent stream limiting (seed: "Lease Limiting").

    ``limit`` streams per user and, when ``global_limit`` is set, at most that many across all
    users; both are checked in one atomic call. Each lease expires ``ttl_seconds`` after its
    last refresh, which is how a crashed process's leases come back (default 30: within 30 s);
    leases of live streams are refreshed every ``ttl_seconds / 3``. ``wait_seconds`` is how long
    `stream_lease` waits for a slot before it gives up (0: refuse at once).
    ``on_lease_lost`` says what a stream whose lease was lost does: ``"end"`` it with
    ``error {reason: "lease_lost"}``, or ``"continue"`` uncounted. On Redis each process records
    its `fingerprint` at startup; a different one recorded by another live process is logged as
    an error, or refused at startup with ``strict=True``.
    """

    limit: int = 5
    ttl_seconds: float = 30
    key_namespace: str = "stream_leases"
    global_limit: int | None = None
    wait_seconds: float = 0.0
    on_lease_lost: LeaseLostPolicy = "end"
    strict: bool = False

    def __post_init__(self) -> None:
        _positive_int(self, "limit", self.limit)
        _positive_number(self, "ttl_seconds", self.ttl_seconds)
        _key_part(self, "key_namespace", self.key_namespace)
        if self.global_limit is not None:
            _positive_int(self, "global_limit", self.global_limit)
        if self.wait_seconds != 0:
            _positive_number(self, "wait_seconds", self.wait_seconds)
        if not isinstance(self.strict, bool):
            raise _fail(self, "strict", self.strict, "a bool")
        if self.on_lease_lost not in ("end", "continue"):
            raise _fail(self, "on_lease_lost", self.on_lease_lost, "'end' or 'continue'")

    def fingerprint(self) -> str:
        """What every process sharing a Redis must agree on, as one comparable string."""
        return (
            f"limit={self.limit} global_limit={self.global_limit} "
            f"ttl_seconds={self.ttl_seconds:g} on_lease_lost={self.on_lease_lost}"
        )


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Event channels (seed: "Channels") plus the retained history used for resume.

    ``history_size`` events are kept per stream (older ones are trimmed) and the history
    expires ``history_ttl_seconds`` after the stream's last event. A follower that falls
    ``subscriber_queue_size`` events or ``subscriber_queue_bytes`` bytes behind is cut off (it
    resumes from its cursor); events larger than ``max_event_bytes`` are refused; at most
    ``shared_cache_bytes`` of recently delivered events are kept decoded and framed per
    process, shared by all its followers; sync workers of `sse_response` run on a
    dedicated pool of ``worker_threads`` threads. A stream with no event for
    ``max_idle_time`` seconds ends with an ``idle_timeout`` error; ``ping_interval`` seconds
    of silence send a keep-alive comment. When the process shuts down, a direct stream may
    still run ``drain_timeout`` seconds (``None``: ``STREAMING_DRAIN_TIMEOUT``, else 5) before
    it is cut with ``error {reason: "shutdown"}``. Every event stream starts with a ``retry:``
    field of ``retry_ms`` milliseconds (``None``: none, the client's default), the delay after
    which a browser ``EventSource`` reconnects from its cursor when the connection drops.
    """

    key_prefix: str = "stream:"
    subscribe_timeout: float = 1.0
    ping_interval: float = 15.0
    max_idle_time: float = 300.0
    history_size: int = 10_000
    history_ttl_seconds: float = 3600.0
    subscriber_queue_size: int = 1024
    max_event_bytes: int = 256 * 1024
    worker_threads: int = 64
    subscriber_queue_bytes: int = 16 * 1024 * 1024
    shared_cache_bytes: int = 32 * 1024 * 1024
    hide_foreign_streams: bool = True
    """Answer ``404`` (as for an unknown id) rather than ``403`` to a follow of a stream that
    belongs to another user, so an id the app chose reveals nothing."""
    expose_errors: bool = False
    """Put the exception's type and text in the ``error`` event of a failed stream (for
    development). Off: the event carries ``reason: internal_error`` and an ``error_id`` that
    the log line and the span carry too."""
    drain_timeout: float | None = None
    write_timeout: float | None = 30.0
    """Seconds a send to a client may stay pending (the client reads nothing, its socket does
    not drain) before its stream is ended as a disconnect: leases released, ``close_reason``
    ``write_timeout``, a log line. Checked by one watchdog per process, at most every second
    (a quarter of the deadline when shorter). ``None`` never ends a stream for that."""
    retry_ms: int | None = 2000
    """The ``retry:`` field every event stream starts with: how many milliseconds a client
    waits before it reconnects after a cut (a follow refused while the backend is unavailable
    gets it jittered, so clients do not return all at once). ``None`` sends none."""
    coalesce_writes: bool = True
    """A direct event stream (a route's own ``StreamingResponse``) hands the chunks it sends
    in one turn of the event loop to the server as one write, after its first chunk, which
    leaves at once: a burst of events costs one system call, not one each. Nothing waits
    longer than that turn; see `streaming_mw.web.coalesce`. A followed stream's live event
    that finds its follower waiting and caught up is written from the delivery itself, without
    waking the follower's task (see `EventStreamResponse`). ``False``: one write per chunk, and
    a task step per follower per event."""
    freeze_startup_heap: bool = False
    """Once the container has started, collect garbage once and move every object alive then
    (modules, the app, the container) out of the collector's full passes (`gc.freeze`), once
    per process: a full pass then walks only what came after, instead of pausing every stream
    of the process for tens of milliseconds. Recommended for a served app; off by default
    because frozen objects are hidden from `gc.get_objects` and `gc.get_referrers`, which some
    debugging and test tools rely on. Skipped when the app turned the collector off."""

    def __post_init__(self) -> None:
        _key_part(self, "key_prefix", self.key_prefix)
        for name in ("drain_timeout", "write_timeout"):
            if getattr(self, name) is not None:
                _positive_number(self, name, getattr(self, name))
        if self.retry_ms is not None:
            _positive_int(self, "retry_ms", self.retry_ms)
        for name in ("subscribe_timeout", "ping_interval", "max_idle_time", "history_ttl_seconds"):
            _positive_number(self, name, getattr(self, name))
        for name in (
            "history_size",
            "subscriber_queue_size",
            "max_event_bytes",
            "worker_threads",
            "subscriber_queue_bytes",
            "shared_cache_bytes",
        ):
            _positive_int(self, name, getattr(self, name))


_SECRET_PARAMS = frozenset(
    {"password", "pass", "pwd", "passwd", "secret", "token", "auth", "access_token", "api_key"}
)


def redact_url(url: str) -> str:
    """``url`` fit for a log line: the password of ``user:password@`` and the value of every
    query parameter that names a secret (``?password=``, ``token``, …) become ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True, slots=True)
class QueueRedisConfig:
    """Where Redis is (seed: ``QueueRedisConfig(url=...)``) and how long to wait for it."""

    url: str = field(repr=False)
    connect_timeout: float = 2.0
    socket_timeout: float = 5.0
    max_connections: int = 3
    """Connections this process opens to Redis at most, the one shared Pub/Sub connection
    included. A command that finds them all busy waits for one (up to ``socket_timeout``)
    instead of opening another, so a burst of requests never multiplies connections; at least
    2 (Pub/Sub + one for commands)."""

    def __repr__(self) -> str:
        return (
            f"QueueRedisConfig(url={redact_url(self.url)!r}, "
            f"connect_timeout={self.connect_timeout!r}, socket_timeout={self.socket_timeout!r}, "
            f"max_connections={self.max_connections!r})"
        )

    def __post_init__(self) -> None:
        _check_redis_url("QueueRedisConfig.url", self.url)
        _positive_number(self, "connect_timeout", self.connect_timeout)
        _positive_number(self, "socket_timeout", self.socket_timeout)
        _positive_int(self, "max_connections", self.max_connections)
        if self.max_connections < 2:
            raise _fail(self, "max_connections", self.max_connections, "an integer >= 2")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where stored events go (seed: ``init_event_storage``). ``host=None`` means the memory
    storage (development and tests); ``auth_type`` is ``none``, ``basic`` or ``aws`` (SigV4 from
    the standard AWS credential chain)."""

    host: str | None = None
    port: int = 9200
    index_prefix: str = "stream_events"
    use_ssl: bool = False
    auth_type: Literal["none", "basic", "aws"] = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    buffer_size: int = 10_000
    batch_size: int = 500
    flush_interval: float = 0.5

    def __post_init__(self) -> None:
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 < self.port < 65536
        ):
            raise _fail(self, "port", self.port, "a port number 1-65535")
        _key_part(self, "index_prefix", self.index_prefix)
        if self.auth_type not in ("none", "basic", "aws"):
            raise _fail(self, "auth_type", self.auth_type, "'none', 'basic' or 'aws'")
        if self.auth_type == "basic" and (not self.username or self.password is None):
            raise _fail(self, "username", self.username, "set, with a password, for basic auth")
        for name in ("buffer_size", "batch_size"):
            _positive_int(self, name, getattr(self, name))
        _positive_number(self, "flush_interval", self.flush_interval)

    @classmethod
    def from_settings(cls, settings: StreamingSettings) -> StorageConfig:
        """The ``OPENSEARCH_*`` environment as a `StorageConfig`."""
        password = settings.opensearch_password
        return cls(
            host=settings.opensearch_host,
            port=settings.opensearch_port,
            use_ssl=settings.opensearch_use_ssl,
            auth_type=settings.opensearch_auth_type,
            username=settings.opensearch_username,
            password=password.get_secret_value() if password is not None else None,
        )
