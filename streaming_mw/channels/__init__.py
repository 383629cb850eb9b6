"""Event channels: the `ChannelBackend` contract, memory and Redis backends, and the
event-level `AsyncStreamChannel` / `SyncStreamChannel`."""

from __future__ import annotations

from .base import ChannelBackend, ProducerMark, StreamMeta, StreamState, Subscription
from .memory import MemoryChannelBackend
from .redis import RedisChannelBackend, SyncRedisChannel
from .stream import AsyncStreamChannel, Follower
from .sync import SyncStreamChannel

__all__ = [
    "AsyncStreamChannel",
    "ChannelBackend",
    "Follower",
    "MemoryChannelBackend",
    "ProducerMark",
    "RedisChannelBackend",
    "StreamMeta",
    "StreamState",
    "Subscription",
    "SyncRedisChannel",
    "SyncStreamChannel",
]
