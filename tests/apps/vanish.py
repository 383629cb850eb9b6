"""An app for the vanished-client test: direct streams (a token every ``every`` seconds) and
followed streams, each holding a lease of its user, served with `streaming_mw.serving`.

A task writes the users' lease counts to ``$STATUS_FILE`` every 0.2 s, so a test outside the
server's network namespace can watch the leases come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse

from streaming_mw import (
    ChannelConfig,
    StreamingMiddleware,
    init_streaming,
    lease_dependency,
    stream_lease,
    stream_response,
)
from streaming_mw.runtime import get_container
from streaming_mw.sse import encode, sse_headers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

USERS = ("fast", "slow", "follow")

init_streaming(
    os.environ.get("REDIS_URL") or None,
    mode="redis" if os.environ.get("REDIS_URL") else "memory",
    channel_config=ChannelConfig(ping_interval=float(os.environ.get("PING", "5"))),
)


async def _report(path: Path) -> None:
    limiter = get_container().lease_limiter()
    while True:
        counts = {user: await limiter.active(user) for user in USERS}
        path.with_suffix(".tmp").write_text(json.dumps(counts))
        path.with_suffix(".tmp").replace(path)
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    report = asyncio.get_running_loop().create_task(_report(Path(os.environ["STATUS_FILE"])))
    yield
    report.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await report


app = FastAPI(lifespan=lifespan)
app.add_middleware(StreamingMiddleware)


async def user_of(user: str = Query()) -> str:
    return user


@app.get("/direct")
async def direct(user: str = Depends(user_of), every: float = 0.1) -> StreamingResponse:
    async def tokens() -> AsyncIterator[bytes]:
        n = 0
        while True:
            n += 1
            yield encode(data={"n": n}, event="token", id=str(n))
            await asyncio.sleep(every)

    async with stream_lease(user):
        return StreamingResponse(tokens(), headers=sse_headers())


@app.get("/follow")
async def follow(
    request: Request,
    user: str = Depends(user_of),
    lease: object = Depends(lease_dependency(user_of)),
) -> Response:
    channel = get_container().stream_channel()
    stream_id = f"quiet-{user}"
    await channel.create(stream_id, owner=user)  # nobody publishes: only pings flow
    return stream_response(stream_id, request, user_id=user)
