"""A stand-in for an LLM client: streams the words of a canned answer with a small delay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ANSWER = (
    "Server-Sent Events keep one HTTP response open and write each token as it is produced. "
    "streaming_mw frames every token safely, holds a per-user stream lease for exactly as long "
    "as the response lives, and lets a reconnecting browser resume where it left off."
)


async def stream_tokens(prompt: str, *, delay: float = 0.05) -> AsyncIterator[str]:
    """Yield the answer to ``prompt`` word by word, ``delay`` seconds apart."""
    words = f"You asked: {prompt!r}. {ANSWER}".split(" ")
    for index, word in enumerate(words):
        await asyncio.sleep(delay)
        yield word if index == 0 else " " + word
