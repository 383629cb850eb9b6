"""`RequestSlots`: the attributes of a `RequestStreams`, declared as slots.

One `RequestStreams` lives as long as each open stream; with its ~40 attributes an ordinary
instance would spill them into a dict of its own (about 1 KiB more per idle follower).
"""

from __future__ import annotations

__all__ = ["RequestSlots"]


class RequestSlots:
    """Base of `RequestStreams`: its attribute slots, nothing else."""

    # fmt: off
    __slots__ = (
        "_batch", "_comments", "_cut", "_direct", "_end", "_ended", "_event_stream", "_gone",
        "_in_flight", "_inbox", "_keeper", "_last_event_at", "_leases", "_opened", "_pump",
        "_registry", "_scope", "_send", "_span", "_stream_id", "_stream_key", "_task", "_tasks",
        "_user", "_watchdog", "bytes_sent", "close_reason", "container", "frames_sent",
        "reads_receive", "reporter", "response_started", "sending_since", "server_receive",
        "stream_kind", "telemetry",
    )
    # fmt: on
