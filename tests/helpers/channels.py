"""Shared by the channel tests: a factory of started channel backends of one kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from streaming_mw.channels import ChannelBackend
    from streaming_mw.config import ChannelConfig


class MakeBackend(Protocol):
    async def __call__(self, config: ChannelConfig | None = None) -> ChannelBackend: ...
