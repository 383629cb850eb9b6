"""``streaming-mw streams list`` and ``streams tail STREAM_ID [--from CURSOR]``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import orjson

from ..channels import AsyncStreamChannel
from ..channels.redis import RedisChannelBackend
from ..config import ChannelConfig
from ..errors import ConfigurationError
from ..runtime.heartbeat import heartbeat_pattern
from ._common import EXIT_OK, connect, print_json, print_table, when

if TYPE_CHECKING:
    import argparse

    from redis.asyncio import Redis

    from ..events import StreamEvent

__all__ = ["live_streams", "run_list", "run_tail"]

_FOLLOW_WAIT = 1.0


async def live_streams(client: Redis, key_prefix: str) -> list[dict[str, Any]]:
    """Every live stream the web processes reported in their heartbeat records."""
    rows: list[dict[str, Any]] = []
    keys = [key async for key in client.scan_iter(match=heartbeat_pattern(key_prefix), count=1000)]
    for key in sorted(keys):
        raw = await client.get(key)
        if raw is None:
            continue  # expired between SCAN and GET
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        for stream in record.get("streams", ()):
            rows.append({"process": record.get("process"), **stream})
    rows.sort(key=lambda row: row.get("started") or 0)
    return rows


async def _list(args: argparse.Namespace) -> int:
    if not (args.redis_url or os.environ.get("REDIS_URL")):
        raise ConfigurationError(
            "no Redis: set REDIS_URL or pass --redis-url (without Redis each web process "
            "sees only its own streams)"
        )
    async with connect(args) as client:
        rows = await live_streams(client, args.key_prefix)
    if args.json:
        for row in rows:
            print_json(row)
        return EXIT_OK
    now = time.time()
    print_table(
        ("STREAM", "PATH", "OWNER", "PROCESS", "AGE", "EVENTS", "LAST EVENT"),
        [
            (
                row.get("stream_id") or "(direct)",
                row.get("path"),
                row.get("user_id"),
                row.get("process"),
                f"{max(0.0, now - (row.get('started') or now)):.0f}s",
                row.get("events", 0),
                when(row.get("last_event")),
            )
            for row in rows
        ],
    )
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))


def _line(event: StreamEvent) -> str:
    data = orjson.dumps(event.data).decode()
    return f"{when(event.timestamp)}  {event.id or '-'}  {event.type}  {data}"


async def _tail(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        config = ChannelConfig(key_prefix=args.key_prefix)
        backend = RedisChannelBackend(client, config)
        await backend.start()
        try:
            follower = await AsyncStreamChannel(backend, config).follow(args.stream_id, args.cursor)
            try:
                while not follower.finished:
                    event = await follower.next(_FOLLOW_WAIT)
                    if event is None:
                        continue
                    if args.json:
                        print_json(
                            {
                                "id": event.id,
                                "event": event.type,
                                "data": event.data,
                                "timestamp": event.timestamp,
                            }
                        )
                    else:
                        print(_line(event), flush=True)
            finally:
                follower.aclose()
        finally:
            await backend.aclose()
    return EXIT_OK


def run_tail(args: argparse.Namespace) -> int:
    return asyncio.run(_tail(args))
