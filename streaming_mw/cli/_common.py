"""What every operator command shares: the Redis connection, exit codes and output."""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from .._redis import make_client, unavailable_as_backend_error
from ..config import ChannelConfig, QueueRedisConfig, StreamLeaseConfig
from ..errors import BackendUnavailableError, ConfigurationError
from ..jobs.model import QueueConfig

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Sequence

    from redis.asyncio import Redis

__all__ = [
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "add_common",
    "connect",
    "fail",
    "print_json",
    "print_table",
    "redis_url",
    "when",
]

EXIT_OK = 0
EXIT_PROBLEM = 1
"""A check failed (``doctor``) or an action was refused (``jobs retry`` of a running job)."""
EXIT_USAGE = 2
"""Bad arguments or configuration (argparse uses 2 as well)."""
EXIT_UNAVAILABLE = 3
"""Redis cannot be reached."""
EXIT_NOT_FOUND = 4
"""No stream or job with that id."""


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every Redis command takes."""
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--key-prefix", default=ChannelConfig().key_prefix, help="stream key prefix"
    )
    parser.add_argument(
        "--lease-namespace", default=StreamLeaseConfig().key_namespace, help="lease key namespace"
    )
    parser.add_argument("--job-prefix", default=QueueConfig().key_prefix, help="job key prefix")
    parser.add_argument("--queue", default=QueueConfig().queue_name, help="job queue name")
    return parser


def redis_url(args: argparse.Namespace) -> str:
    url: str | None = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigurationError("no Redis: set REDIS_URL or pass --redis-url")
    return url


@asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[Redis]:
    """A client that has answered one PING, closed on exit."""
    url = redis_url(args)
    try:
        client = make_client(QueueRedisConfig(url, connect_timeout=2.0, socket_timeout=5.0))
    except ValueError as exc:  # a URL redis-py cannot parse
        raise ConfigurationError(f"bad Redis URL: {exc}") from exc
    try:
        try:
            with unavailable_as_backend_error("connect"):
                await client.ping()
        except RedisError as exc:  # e.g. authentication
            raise BackendUnavailableError(f"Redis refused the connection: {exc}") from exc
        yield client
    finally:
        await client.aclose()


def fail(message: str, code: int) -> int:
    """One line on stderr; return ``code``."""
    print(f"streaming-mw: {message}", file=sys.stderr)
    return code


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def when(timestamp: float | None) -> str:
    """A Unix time as ISO 8601 UTC to the second, or ``-``."""
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned columns separated by two spaces, a header line first."""
    cells = [[str(c) for c in columns], *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
