"""Event storage (seed: ``storage.py``): the `EventStorage` contract, memory storage, the
never-blocking `StorageWriter`, and `StreamLogHandler` for log shipping. The OpenSearch backend
(`streaming_mw.storage.opensearch`) needs the ``opensearch`` extra."""

from __future__ import annotations

from .base import EventStorage
from .loghandler import StreamLogHandler
from .memory import MemoryEventStorage
from .writer import StorageWriter

__all__ = ["EventStorage", "MemoryEventStorage", "StorageWriter", "StreamLogHandler"]
