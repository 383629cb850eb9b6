"""Giving back a request's leases when its stream ends, and saying why in the log."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..leases import Lease
    from ..runtime.keeper import LeaseKeeper
    from ..runtime.lease_events import LeaseEvents

__all__ = ["release_leases", "shown"]

log = logging.getLogger("streaming_mw.middleware")

_RELEASE_TIMEOUT = 5.0


def shown(text: str) -> str:
    """``text`` for a log line: quoted and escaped if it holds a line break or control
    character (a user id may; it must not forge a log line)."""
    return text if text.isprintable() else repr(text)


async def release_leases(
    leases: Sequence[Lease],
    keeper: LeaseKeeper,
    events: LeaseEvents,
    *,
    reason: str,
    path: str,
    lived: float,
) -> None:
    """Stop refreshing ``leases``, release them (each bounded by a timeout), report each
    release, and log why they came back: DEBUG for a stream that completed, INFO otherwise (a
    client gone, a failure, the shutdown, a write deadline), with how long the stream lived."""
    for lease in leases:
        keeper.drop(lease)
    results = await asyncio.gather(
        *(asyncio.wait_for(lease.release(), _RELEASE_TIMEOUT) for lease in leases),
        return_exceptions=True,
    )
    for lease, result in zip(leases, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("could not release lease %s: %r", lease.lease_id, result)
        else:
            events.released(lease)
    log.log(
        logging.DEBUG if reason == "completed" else logging.INFO,
        "released %d lease(s) of %s: stream %s ended (%s) after %.1fs",
        len(leases),
        ", ".join(sorted({shown(lease.user_id) for lease in leases})),
        shown(path),
        reason,
        lived,
    )
