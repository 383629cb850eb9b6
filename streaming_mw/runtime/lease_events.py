"""What happens to stream leases, told to the metrics and to the application's callback.

`LeaseEvents` is the one place every lease event goes through (acquired, rejected, lost,
released, backend error): it records the OpenTelemetry instruments of `Telemetry` and calls the
``on_event`` callback given to `init_lease_limiter` with a `LeaseEvent`. The callback runs on
the event loop, synchronously: keep it short (count, log, schedule a task). An exception it
raises is logged and does not disturb the lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from ..telemetry import ATTR_LEASE_OPERATION, ATTR_LEASE_OUTCOME, ATTR_LEASE_SCOPE

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..errors import StreamLimitExceeded
    from ..leases.base import Lease
    from ..telemetry import Telemetry

__all__ = ["LeaseEvent", "LeaseEventKind", "LeaseEvents"]

log = logging.getLogger("streaming_mw.leases")

LeaseEventKind: TypeAlias = Literal["acquired", "rejected", "lost", "released", "backend_error"]


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """One lease event, as the ``on_event`` callback receives it.

    ``lease_id`` is None for ``rejected`` and an acquisition's ``backend_error``; ``scope`` is
    set for ``rejected`` (which limit refused); ``waited`` is how long the acquisition waited for
    a slot (``acquired``, ``rejected``); ``operation`` names what failed for ``backend_error``
    (``acquire`` or ``refresh``).
    """

    kind: LeaseEventKind
    user_id: str
    lease_id: str | None = None
    scope: Literal["user", "global"] | None = None
    waited: float = 0.0
    operation: Literal["acquire", "refresh"] | None = None


class LeaseEvents:
    """Counts lease events and hands them to the application's callback."""

    def __init__(
        self,
        telemetry: Callable[[], Telemetry],
        on_event: Callable[[LeaseEvent], object] | None = None,
    ) -> None:
        self._telemetry = telemetry
        self.on_event = on_event

    def acquired(self, lease: Lease, *, waited: float | None = None) -> None:
        telemetry = self._telemetry()
        telemetry.leases_acquired.add(1)
        if waited is not None:
            telemetry.lease_wait.record(waited, {ATTR_LEASE_OUTCOME: "acquired"})
        self._tell(LeaseEvent("acquired", lease.user_id, lease.lease_id, waited=waited or 0.0))

    def rejected(self, exc: StreamLimitExceeded, *, waited: float | None = None) -> None:
        telemetry = self._telemetry()
        telemetry.lease_rejections.add(1, {ATTR_LEASE_SCOPE: exc.scope})
        if waited is not None:
            telemetry.lease_wait.record(waited, {ATTR_LEASE_OUTCOME: "rejected"})
        self._tell(LeaseEvent("rejected", exc.user_id, scope=exc.scope, waited=waited or 0.0))

    def lost(self, lease: Lease) -> None:
        self._telemetry().leases_lost.add(1)
        self._tell(LeaseEvent("lost", lease.user_id, lease.lease_id))

    def released(self, lease: Lease) -> None:
        self._telemetry().leases_released.add(1)
        self._tell(LeaseEvent("released", lease.user_id, lease.lease_id))

    def backend_error(
        self, operation: Literal["acquire", "refresh"], user_id: str, lease_id: str | None = None
    ) -> None:
        self._telemetry().lease_backend_errors.add(1, {ATTR_LEASE_OPERATION: operation})
        self._tell(LeaseEvent("backend_error", user_id, lease_id, operation=operation))

    def _tell(self, event: LeaseEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("the lease event callback failed on %s", event.kind)
