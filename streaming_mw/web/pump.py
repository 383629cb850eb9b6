"""The disconnect pump: reads a request's ``receive`` for the app once its response started.

A server speaking ASGI 2.3 tells of a disconnect only through ``receive``, and an app that
streams rarely listens. `RequestStreams` starts this pump when the response starts (never
while the app's own ``receive`` call is pending): it hands every message to the app's inbox
unchanged and ends the request's stream when the disconnect comes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import Message, Receive

    from .frames import CloseReason

__all__ = ["pump_receive"]

log = logging.getLogger("streaming_mw.middleware")


async def pump_receive(
    receive: Receive,
    inbox: asyncio.Queue[Message],
    end: Callable[[CloseReason], Awaitable[None]],
) -> None:
    """Move ``receive``'s messages to ``inbox`` until the disconnect, then ``end`` the stream."""
    try:
        while True:
            message = await receive()
            inbox.put_nowait(message)
            if message["type"] == "http.disconnect":
                await end("client_disconnect")
                return
    except asyncio.CancelledError:
        return  # the request ended; it hands the app a final disconnect itself
    except Exception:
        log.exception("reading the request's receive channel failed")
        inbox.put_nowait({"type": "http.disconnect"})
        await end("error")
