"""Job processors for the job tests, and the worker config ``tests.apps.job_tasks:config``.

Every run of a processor is recorded as JSON lines appended to the file named by the
``JOBS_RUN_LOG`` environment variable (read at call time; nothing is recorded without it):
``{"ev": "start" | "end" | "abort" | "stopped", "stream": ..., "pid": ..., "t": ...}``.
The tests read it back to check that no job was lost and none ran twice at the same time.

The config reads ``REDIS_URL``, ``JOBS_VISIBILITY_TIMEOUT``, ``JOBS_MAX_RETRIES`` and
``JOBS_RETRY_BACKOFF`` like ``examples.jobs.worker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_mw import QueueConfig

if TYPE_CHECKING:
    from streaming_mw import StreamContext

SLOW = "tests.slow"
SLOW_ASYNC = "tests.slow_async"
FAIL = "tests.fail"
CRASH = "tests.crash"


def record(event: str, ctx: StreamContext, **extra: Any) -> None:
    """Append one line to ``$JOBS_RUN_LOG`` (one ``write`` of an ``O_APPEND`` file)."""
    path = os.environ.get("JOBS_RUN_LOG")
    if not path:
        return
    line = {"ev": event, "stream": ctx.stream_id, "pid": os.getpid(), "t": time.time(), **extra}
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The lines `record` wrote to ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def slow(payload: dict[str, Any], ctx: StreamContext) -> None:
    """Sync: ``steps`` progress events ``delay`` seconds apart; stops early on cancellation."""
    steps, delay = int(payload.get("steps", 5)), float(payload.get("delay", 0.1))
    record("start", ctx)
    try:
        for step in range(1, steps + 1):
            if ctx.cancelled:
                record("stopped", ctx)
                return
            time.sleep(delay)
            ctx.progress(round(100 * step / steps), step=f"{step}/{steps}", pid=os.getpid())
        ctx.complete(success=True, pid=os.getpid())
    except BaseException:
        record("abort", ctx)
        raise
    record("end", ctx)


async def slow_async(payload: dict[str, Any], ctx: StreamContext) -> None:
    """Async: the same events, awaited; cancellation is recorded as ``abort``."""
    steps, delay = int(payload.get("steps", 5)), float(payload.get("delay", 0.1))
    record("start", ctx)
    try:
        await asyncio.sleep(float(payload.get("silent", 0.0)))
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)
            await ctx.progress(round(100 * step / steps), step=f"{step}/{steps}", pid=os.getpid())
        await ctx.complete(success=True, pid=os.getpid())
    except BaseException:
        record("abort", ctx)
        raise
    record("end", ctx)


def fail(payload: dict[str, Any], ctx: StreamContext) -> None:
    """Fails on every attempt."""
    record("start", ctx)
    ctx.log("trying")
    raise RuntimeError(str(payload.get("error", "always fails")))


def crash(payload: dict[str, Any], ctx: StreamContext) -> None:
    """Takes its worker process down (like the OOM killer) on every attempt."""
    record("start", ctx)
    ctx.log("crashing")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def make_config(**overrides: Any) -> QueueConfig:
    """A config with the processors; the environment gives the defaults."""
    settings: dict[str, Any] = {
        "redis_url": os.environ.get("REDIS_URL") or None,
        "visibility_timeout": float(os.environ.get("JOBS_VISIBILITY_TIMEOUT", "1")),
        "max_retries": int(os.environ.get("JOBS_MAX_RETRIES", "3")),
        "retry_backoff": float(os.environ.get("JOBS_RETRY_BACKOFF", "0.1")),
        **overrides,
    }
    config = QueueConfig(**settings)
    registry = {SLOW: slow, SLOW_ASYNC: slow_async, FAIL: fail, CRASH: crash}
    config.operations_registry.update(registry)
    return config


def __getattr__(name: str) -> QueueConfig:
    if name == "config":  # built on first use, so importing the processors reads no env
        globals()["config"] = built = make_config()
        return built
    raise AttributeError(name)
