"""``streaming-mw doctor``: is this Redis right for streaming_mw?"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from .._redis import close_pubsub
from ..runtime.heartbeat import heartbeat_pattern
from ._common import EXIT_OK, EXIT_PROBLEM, connect, print_json

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

__all__ = ["key_families", "run_doctor"]

_PINGS = 5
_SAFE_POLICIES = ("noeviction",)
"""Policies that never evict a key without a TTL; ``volatile-*`` ones are safe too."""


def key_families(args: argparse.Namespace) -> dict[str, str]:
    """The library's key families and the ``SCAN MATCH`` pattern of each."""
    p, jobs = args.key_prefix, args.job_prefix
    return {
        "stream events": f"{p}{{*}}:events",
        "stream meta": f"{p}{{*}}:meta",
        "live-stream records": heartbeat_pattern(p),
        "leases": f"{args.lease_namespace}:{{*}}",
        "job records": f"{jobs}{{*}}:job:*",
        "job queues": f"{jobs}{{*}}:ready",
        "dead letters": f"{jobs}{{*}}:dead",
    }


async def _count(client: Redis, pattern: str) -> int:
    count = 0
    async for _ in client.scan_iter(match=pattern, count=1000):
        count += 1
    return count


async def _latency_ms(client: Redis) -> float:
    samples = []
    for _ in range(_PINGS):
        start = time.perf_counter()
        await client.ping()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3)


async def _pubsub_works(client: Redis, channel: str) -> bool:
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        await client.publish(channel, b"doctor")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None and message.get("data") == b"doctor":
                return True
        return False
    except RedisError:
        return False
    finally:
        await close_pubsub(pubsub)


async def _streams_work(client: Redis, key: str) -> bool:
    try:
        await client.xadd(key, {"e": b"doctor"}, id="1-0", maxlen=10)
        await client.pexpire(key, 10_000)
        entries = await client.xrange(key, min="1-0", max="1-0")
        return entries is not None and len(entries) == 1
    except RedisError:
        return False
    finally:
        await client.delete(key)


async def _masters(client: Redis) -> list[str]:
    # execute_command is unannotated on some redis-py releases: a typed binding, not an ignore
    execute: Callable[..., Awaitable[Any]] = client.execute_command
    nodes = await execute("CLUSTER", "NODES")
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    return sorted(
        line.split()[1].split("@")[0]
        for line in text.splitlines()
        if len(line.split()) > 2 and "master" in line.split()[2]
    )


async def _policy(client: Redis) -> str | None:
    try:
        config: dict[Any, Any] = await client.config_get("maxmemory-policy")
    except ResponseError:
        return None  # CONFIG is disabled (a managed Redis)
    value = config.get(b"maxmemory-policy", config.get("maxmemory-policy"))
    return value.decode() if isinstance(value, bytes) else value


async def diagnose(client: Redis, args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``doctor`` reports, as one JSON-ready dict."""
    info: dict[str, Any] = await client.info("server")
    cluster: dict[str, Any] = await client.info("cluster")
    mode = "cluster" if int(cluster.get("cluster_enabled", 0)) else "standalone"
    probe = f"{args.key_prefix}doctor:{{{secrets.token_hex(6)}}}"
    keys = {}
    for name, pattern in key_families(args).items():
        keys[name] = await _count(client, pattern)
    report: dict[str, Any] = {
        "mode": mode,
        "masters": await _masters(client) if mode == "cluster" else [],
        "version": str(info.get("redis_version", "?")),
        "latency_ms": await _latency_ms(client),
        "keys": keys,
        "pubsub": await _pubsub_works(client, probe),
        "streams": await _streams_work(client, probe),
        "maxmemory_policy": await _policy(client),
    }
    warnings = []
    policy = report["maxmemory_policy"]
    if policy is None:
        warnings.append("maxmemory-policy unknown (CONFIG GET refused): check it is noeviction")
    elif policy not in _SAFE_POLICIES and not policy.startswith("volatile-"):
        warnings.append(
            f"maxmemory-policy {policy} evicts keys without a TTL (stream meta, job queues): "
            "use noeviction or a volatile-* policy"
        )
    if mode == "cluster":
        warnings.append("cluster: key counts are of the node connected to only")
    report["warnings"] = warnings
    report["ok"] = bool(report["pubsub"] and report["streams"])
    return report


def _print_human(report: dict[str, Any]) -> None:
    mode = report["mode"]
    if report["masters"]:
        mode += f" ({len(report['masters'])} masters: {', '.join(report['masters'])})"
    print(f"mode        {mode}")
    print(f"server      redis {report['version']}")
    print(f"latency     {report['latency_ms']} ms (median of {_PINGS} PINGs)")
    print("keys")
    for name, count in report["keys"].items():
        print(f"  {name:<20}{count}")
    print(f"pubsub      {'ok' if report['pubsub'] else 'FAILED'}")
    print(f"streams     {'ok' if report['streams'] else 'FAILED'}")
    print(f"eviction    {report['maxmemory_policy'] or 'unknown'}")
    for warning in report["warnings"]:
        print(f"warning     {warning}")


async def _doctor(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        report = await asyncio.wait_for(diagnose(client, args), 60)
    if args.json:
        print_json(report)
    else:
        _print_human(report)
    return EXIT_OK if report["ok"] else EXIT_PROBLEM


def run_doctor(args: argparse.Namespace) -> int:
    return asyncio.run(_doctor(args))
