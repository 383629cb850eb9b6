"""`WorkerRunner` recognises every shape of async worker."""

from __future__ import annotations

import functools
from typing import Any

from streaming_mw import ChannelConfig, SSEEmitter
from streaming_mw.channels import AsyncStreamChannel, MemoryChannelBackend
from streaming_mw.runtime.runner import WorkerRunner, is_async_callable


class AsyncCallable:
    async def __call__(self, config: Any, emitter: SSEEmitter) -> None:
        await emitter.log(f"object {config}")


async def coroutine_worker(config: Any, emitter: SSEEmitter) -> None:
    await emitter.log(f"function {config}")


def test_is_async_callable() -> None:
    assert is_async_callable(coroutine_worker)
    assert is_async_callable(AsyncCallable())
    assert is_async_callable(functools.partial(coroutine_worker, 1))
    assert not is_async_callable(lambda config, emitter: None)
    assert not is_async_callable(print)


async def run(worker: Any) -> list[tuple[str, Any]]:
    config = ChannelConfig()
    channel = AsyncStreamChannel(MemoryChannelBackend(config), config)
    runner = WorkerRunner(2)
    emitter = SSEEmitter(channel)
    await emitter.open()
    follower = await channel.follow(emitter.stream_id)
    try:
        await runner.start(worker, "x", emitter).task
        events = []
        while (event := await follower.next(1.0)) is not None:
            events.append((event.type, event.data))
        return events
    finally:
        follower.aclose()
        await runner.aclose()


async def test_object_with_async_call_is_awaited() -> None:
    events = await run(AsyncCallable())
    assert events == [
        ("log", {"message": "object x", "level": "info"}),
        ("complete", {"success": True}),
    ]


async def test_plain_callable_returning_a_coroutine_is_awaited() -> None:
    events = await run(lambda config, emitter: coroutine_worker(config, emitter))
    assert events[0] == ("log", {"message": "function x", "level": "info"})
    assert events[-1] == ("complete", {"success": True})
