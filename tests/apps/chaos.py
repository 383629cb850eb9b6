"""The app the chaos suite serves in a child process: both patterns, and a status route.

Configured from the environment: ``REDIS_URL`` (unset: memory mode), ``WRITE_TIMEOUT`` (the
write deadline, seconds, ``none`` to disable), ``QUEUE`` (``subscriber_queue_size``),
``HISTORY`` (``history_size``), ``SOCKET_TIMEOUT`` (the Redis client's, seconds).

- ``GET /direct?user=&n=&every=&size=``: a direct stream under `stream_lease`: ``n`` ``token``
  events (ids ``1..n``, ``size`` bytes of padding each) every ``every`` seconds, then ``done``;
  with ``fail=k`` the generator raises before token ``k``.
- ``POST /deploy`` (JSON ``{"steps", "delay", "size"}``, caller in ``X-User``): a queue-based
  stream (`sse_response`) whose in-process worker emits ``steps`` ``log`` events (message
  ``"1"``.. ``"steps"``) then ``complete``; the response holds a lease of the caller.
- ``GET /streams/{id}``: follow / resume (``Last-Event-ID``), caller in ``X-User``, holding a
  lease of the caller.
- ``POST /jobs?size=``: `enqueue` a job with a payload of ``size`` bytes.
- ``GET /status?users=a,b``: the process's figures: asyncio tasks, RSS, open streams, leases
  (registry and limiter), streams watched by the write deadline and cut by it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from streaming_mw import (
    ChannelConfig,
    DeploymentEmitter,
    QueueRedisConfig,
    StreamingMiddleware,
    StreamLeaseConfig,
    enqueue,
    get_emitter,
    init_streaming,
    lease_dependency,
    sse_response,
    stream_lease,
    stream_response,
    streaming_identity,
)
from streaming_mw.runtime import get_container
from streaming_mw.sse import encode, sse_headers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# The library's INFO lines (leases released, with why) in the server's log, like uvicorn's.
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
logging.getLogger("streaming_mw").addHandler(_handler)
logging.getLogger("streaming_mw").setLevel(logging.INFO)

_timeout = os.environ.get("WRITE_TIMEOUT", "30")
_url = os.environ.get("REDIS_URL") or None
init_streaming(
    QueueRedisConfig(_url, socket_timeout=float(os.environ.get("SOCKET_TIMEOUT", "5")))
    if _url
    else None,
    mode="redis" if _url else "memory",
    lease_config=StreamLeaseConfig(limit=5),
    channel_config=ChannelConfig(
        write_timeout=None if _timeout == "none" else float(_timeout),
        subscriber_queue_size=int(os.environ.get("QUEUE", "1024")),
        history_size=int(os.environ.get("HISTORY", "10000")),
        ping_interval=5.0,
    ),
)


def user_header(request: Request) -> str | None:
    return request.headers.get("x-user")


def caller(request: Request) -> str:
    """The user a followed stream's lease counts against (empty: refused with 400)."""
    return request.headers.get("x-user", "")


held_by_caller = Depends(lease_dependency(caller))


async def emit(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    pad = "x" * int(config.get("size", 0))
    delay = float(config.get("delay", 0.02))
    for n in range(1, int(config.get("steps", 10)) + 1):
        fields = {"pad": pad} if pad else {}
        await emitter.log(str(n), **fields)
        await asyncio.sleep(delay)
    await emitter.complete(success=True)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


app = FastAPI()
app.add_middleware(StreamingMiddleware)
app.dependency_overrides[streaming_identity] = user_header


@app.get("/direct")
async def direct(user: str, n: int = 10, every: float = 0.02, size: int = 0, fail: int = 0) -> Any:
    pad = "x" * size

    async def tokens() -> AsyncIterator[bytes]:
        for k in range(1, n + 1):
            if k == fail:
                raise RuntimeError("model backend said: secret-api-key-123")
            yield encode(data={"n": k, "pad": pad}, event="token", id=str(k))
            await asyncio.sleep(every)
        yield encode(data={"n": n}, event="done")

    async with stream_lease(user):
        return StreamingResponse(tokens(), headers=sse_headers())


@app.post("/deploy")
async def deploy(
    config: dict[str, Any],
    emitter: DeploymentEmitter = Depends(get_emitter),
    lease: object = held_by_caller,
) -> Any:
    return await sse_response(emitter, emit, config)


@app.get("/streams/{stream_id}")
async def follow(stream_id: str, request: Request, lease: object = held_by_caller) -> Any:
    return stream_response(stream_id, request, user_id=user_header(request))


@app.post("/jobs")
async def start_job(size: int, request: Request) -> JSONResponse:
    handle = await enqueue("op", {"blob": "x" * size}, user_id=user_header(request))
    return JSONResponse({"job_id": handle.job_id})


def _watchdog() -> Any:
    stack: Any = app.middleware_stack
    while stack is not None and not isinstance(stack, StreamingMiddleware):
        stack = getattr(stack, "app", None)
    return None if stack is None else stack.write_watchdog


@app.get("/status")
async def status(users: str = "") -> dict[str, Any]:
    container = get_container()
    limiter = container.lease_limiter()
    names = [u for u in users.split(",") if u]
    held = {u: await limiter.active(u) for u in names}
    watchdog = _watchdog()
    return {
        "tasks": len(asyncio.all_tasks()),
        "rss_kb": rss_kb(),
        "open_streams": container.stream_registry().count(),
        "registry_leases": container.stream_registry().by_user(),
        "leases": sum(held.values()),
        "held": {u: c for u, c in held.items() if c},
        "watched": 0 if watchdog is None else len(watchdog.watched),
        "write_cuts": 0 if watchdog is None else watchdog.cuts,
        "longest_spared": 0.0 if watchdog is None else watchdog.longest_spared,
    }
