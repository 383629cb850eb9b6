"""`HistoryWriter` and `write_flight`: the batches of several streams in one round trip, and a
flight whose round trip failed after the backend stored part of it is stored exactly once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from streaming_mw._tasks import TaskSet
from streaming_mw.channels.base import ProducerMark, StreamState
from streaming_mw.channels.memory import MemoryChannelBackend
from streaming_mw.channels.producing import Batch
from streaming_mw.errors import BackendUnavailableError, StreamClosedError
from streaming_mw.web.history import HistoryWriter, write_flight

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streaming_mw.errors import StreamingError

pytestmark = pytest.mark.timeout(30)


class LosesAnswers(MemoryChannelBackend):
    """Stores the first ``store`` batches of the next round trip, then fails it (as a connection
    lost before the answers came back)."""

    def __init__(self) -> None:
        super().__init__()
        self.store: int | None = None
        self.round_trips: list[int] = []

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | StreamingError]:
        self.round_trips.append(len(batches))
        store, self.store = self.store, None
        if store is None:
            return await super().append_batches(batches)
        await super().append_batches(batches[:store])
        raise BackendUnavailableError("connection lost")


def flight(stream_id: str, producer: str, sizes: Sequence[int], start: int = 1) -> list[Batch]:
    batches, n = [], 0
    for i, size in enumerate(sizes):
        payloads = [f"{stream_id}-{n + k}".encode() for k in range(size)]
        n += size
        batches.append(Batch(stream_id, payloads, None, ProducerMark(producer, start + i)))
    return batches


@pytest.mark.parametrize("stored", [0, 1, 2, 3])
async def test_a_lost_round_trip_stores_every_batch_once(stored: int) -> None:
    backend = LosesAnswers()
    await backend.create("s")
    writer = HistoryWriter(backend, TaskSet())
    backend.store = stored
    firsts = await write_flight(writer, backend, flight("s", "p", [2, 3, 1]))
    assert firsts is not None
    assert firsts[:stored] == [None] * stored  # stored, their answers lost
    assert firsts[stored:] == [1, 3, 6][stored:]
    assert [payload for _, payload in await backend.read("s", 0, 10)] == [
        f"s-{i}".encode() for i in range(6)
    ]


async def test_the_batches_of_several_streams_share_a_round_trip() -> None:
    backend = LosesAnswers()
    for stream_id in ("a", "b", "c"):
        await backend.create(stream_id)
    await backend.append_batch("c", [b"end"], final_state=None, producer=ProducerMark("z", 1))
    writer = HistoryWriter(backend, TaskSet())
    results = await asyncio.gather(
        write_flight(writer, backend, flight("a", "p", [2, 2])),
        write_flight(writer, backend, flight("b", "q", [1])),
    )
    assert list(results) == [[1, 3], [1]]
    assert backend.round_trips == [3]
    done = StreamState.DONE
    await backend.append_batch("c", [b"x"], final_state=done, producer=ProducerMark("z", 2))
    with pytest.raises(StreamClosedError):
        await write_flight(writer, backend, flight("c", "y", [1]))
