"""The `JobQueue` contract, on `MemoryJobQueue` and on `RedisJobQueue` (session redis-server and
session Redis Cluster):
delivery, attempts, heartbeat ownership, reaping, retries, dead letters, cancellation; and the
value objects (`JobEnvelope`, `JobStatus`, `QueueConfig`)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from streaming_mw.errors import ConfigurationError, InvalidEventError
from streaming_mw.jobs import (
    JobEnvelope,
    JobQueue,
    JobState,
    JobStatus,
    MemoryJobQueue,
    QueueConfig,
    RedisJobQueue,
)
from tests.conftest import BACKEND_KINDS
from tests.helpers.leases import eventually
from tests.helpers.redis_clients import fresh_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streaming_mw._redis import AsyncRedis
    from streaming_mw.jobs import Delivery

NO_WAIT = 0.05


class MakeQueue(Protocol):
    def __call__(self, **config: Any) -> JobQueue: ...


@pytest.fixture(params=BACKEND_KINDS)
async def make_queue(request: pytest.FixtureRequest) -> AsyncIterator[MakeQueue]:
    """Builds queues of one backend (Redis: one client on an empty database)."""
    client: AsyncRedis | None = None
    if request.param != "memory":
        client = await fresh_client(request, request.param)

    def make(**config: Any) -> JobQueue:
        queue_config = QueueConfig(**config)
        if client is None:
            return MemoryJobQueue(queue_config)
        return RedisJobQueue(client, queue_config)

    try:
        yield make
    finally:
        if client is not None:
            await client.aclose()


def envelope(n: int = 1, operation: str = "op", **kw: Any) -> JobEnvelope:
    return JobEnvelope(f"job-{n}", operation, {"n": n, "text": "é ✓"}, f"stream-{n}", **kw)


async def fetch(queue: JobQueue, consumer: str = "a", timeout: float = 3.0) -> Delivery:
    """The next delivery for ``consumer``; fails if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery = await queue.fetch(consumer, 0.2)
        if delivery is not None:
            return delivery
    raise AssertionError(f"nothing delivered to {consumer} within {timeout}s")


async def status_of(queue: JobQueue, job_id: str = "job-1") -> JobStatus:
    status = await queue.status(job_id)
    assert status is not None, f"{job_id} unknown"
    return status


async def state_of(queue: JobQueue, job_id: str = "job-1") -> JobState:
    return (await status_of(queue, job_id)).state


# --- delivery ----------------------------------------------------------------------------


async def test_enqueue_fetch_finish(make_queue: MakeQueue) -> None:
    queue = make_queue()
    job = envelope(owner="alice", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    await queue.enqueue(job)
    queued = await status_of(queue, job.job_id)
    assert (queued.state, queued.attempts, queued.worker) == (JobState.QUEUED, 0, None)
    assert (queued.operation, queued.stream_id) == ("op", "stream-1")

    delivery = await fetch(queue, "worker-a")
    assert delivery.envelope == job
    assert (delivery.attempt, delivery.consumer) == (1, "worker-a")
    running = await status_of(queue, job.job_id)
    assert (running.state, running.attempts, running.worker) == (JobState.RUNNING, 1, "worker-a")
    assert running.updated_at >= queued.updated_at

    await queue.finish(delivery, JobState.DONE)
    done = await status_of(queue, job.job_id)
    assert (done.state, done.attempts, done.error) == (JobState.DONE, 1, None)
    assert await queue.fetch("worker-b", NO_WAIT) is None
    assert await queue.reap("worker-b", 0.001, 10) == []


async def test_jobs_come_out_in_order_once_each(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for n in range(5):
        await queue.enqueue(envelope(n))
    ids = [(await fetch(queue, f"w{n % 2}")).envelope.job_id for n in range(5)]
    assert ids == [f"job-{n}" for n in range(5)]
    assert await queue.fetch("w0", NO_WAIT) is None


async def test_an_enqueue_repeated_with_the_same_job_id_queues_it_once(
    make_queue: MakeQueue,
) -> None:
    # A retried enqueue (the first copy ran; its answer was lost) must not run the job twice.
    queue = make_queue()
    await queue.enqueue(envelope(1))
    await queue.enqueue(envelope(1))
    assert (await fetch(queue, "a")).envelope.job_id == "job-1"
    assert await queue.fetch("b", NO_WAIT) is None
    assert (await status_of(queue)).attempts == 1


async def test_fetch_waits_for_a_job_then_gives_up(make_queue: MakeQueue) -> None:
    queue = make_queue()
    started = time.monotonic()
    assert await queue.fetch("a", 0.3) is None
    assert 0.25 <= time.monotonic() - started < 2.0

    waiting = asyncio.ensure_future(queue.fetch("a", 3.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await queue.enqueue(envelope(7))
    delivery = await asyncio.wait_for(waiting, 3.0)
    assert delivery is not None
    assert delivery.envelope.job_id == "job-7"


async def test_queues_of_other_names_are_separate(make_queue: MakeQueue) -> None:
    first, second = make_queue(queue_name="first"), make_queue(queue_name="second")
    await first.enqueue(envelope(1))
    assert await second.fetch("a", NO_WAIT) is None
    assert await second.status("job-1") is None
    assert (await fetch(first)).envelope.job_id == "job-1"


async def test_unknown_and_failed_jobs(make_queue: MakeQueue) -> None:
    queue = make_queue()
    assert await queue.status("nope") is None
    assert await queue.request_cancel("nope") is False
    assert await queue.cancel_requested([]) == await queue.cancel_requested(["nope"]) == set()
    assert await queue.dead_letters() == []
    await queue.enqueue(envelope())
    await queue.finish(await fetch(queue), JobState.FAILED, "it said no")
    status = await status_of(queue)
    assert (status.state, status.error) == (JobState.FAILED, "it said no")
    assert await queue.request_cancel("job-1") is False


# --- heartbeats and reaping --------------------------------------------------------------


async def test_heartbeats_keep_a_delivery_and_silence_loses_it(make_queue: MakeQueue) -> None:
    queue = make_queue()
    await queue.enqueue(envelope())
    old = await fetch(queue, "a")
    assert await queue.heartbeat("b", old) is False  # only its consumer may heartbeat it
    min_idle = 0.3
    beat_until = time.monotonic() + 3 * min_idle
    while time.monotonic() < beat_until:
        assert await queue.heartbeat("a", old) is True
        silent_since = time.monotonic()
        assert await queue.reap("b", min_idle, 10) == []
        await asyncio.sleep(min_idle / 4)

    taken: list[Delivery] = []

    async def reaped() -> bool:
        taken.extend(await queue.reap("b", min_idle, 10))
        return bool(taken)

    await eventually(reaped, timeout=3.0)
    assert time.monotonic() - silent_since >= min_idle * 0.9
    [new] = taken
    assert new.envelope == old.envelope
    assert (new.attempt, new.consumer) == (2, "b")
    status = await status_of(queue, "job-1")
    assert (status.state, status.attempts, status.worker) == (JobState.RUNNING, 2, "b")

    # The old owner has lost it: it can neither keep it nor settle it.
    assert await queue.heartbeat("a", old) is False
    await queue.finish(old, JobState.DONE)
    await queue.retry_later(old, 0.01, "stale")
    await queue.dead_letter(old, "stale")
    status = await status_of(queue, "job-1")
    assert (status.state, status.worker, status.error) == (JobState.RUNNING, "b", None)
    assert await queue.dead_letters() == []
    assert await queue.reap("c", min_idle, 10) == []  # b owns it, freshly

    assert await queue.heartbeat("b", new) is True
    await queue.finish(new, JobState.DONE)
    assert await state_of(queue, "job-1") is JobState.DONE
    assert await queue.heartbeat("b", new) is False
    await asyncio.sleep(min_idle)  # a visibility timeout: nothing is left to reap
    assert await queue.reap("c", min_idle, 10) == []


async def test_reap_honours_its_limit(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for n in range(3):
        await queue.enqueue(envelope(n))
        await fetch(queue, "a")
    await asyncio.sleep(0.2)  # a visibility timeout
    first = await queue.reap("b", 0.1, 2)
    second = await queue.reap("c", 0.1, 2)
    assert (len(first), len(second)) == (2, 1)
    ids = {d.envelope.job_id for d in first + second}
    assert ids == {"job-0", "job-1", "job-2"}
    assert all(d.attempt == 2 for d in first + second)


# --- retries and dead letters ------------------------------------------------------------


async def test_retry_later_comes_back_after_the_delay(make_queue: MakeQueue) -> None:
    queue = make_queue()
    await queue.enqueue(envelope())
    first = await fetch(queue)
    assert first.attempt == 1
    delay = 0.4
    await queue.retry_later(first, delay, "RuntimeError: flaky")
    retried_at = time.monotonic()
    status = await status_of(queue, "job-1")
    assert (status.state, status.attempts) == (JobState.RETRYING, 1)
    assert status.error == "RuntimeError: flaky"
    assert await queue.promote_due() == 0
    assert await queue.fetch("a", NO_WAIT) is None
    assert await queue.reap("b", 0.001, 10) == []  # acknowledged: nothing pending

    async def promoted() -> bool:
        return await queue.promote_due() == 1

    await eventually(promoted, timeout=3.0)
    assert time.monotonic() - retried_at >= delay - 0.05
    second = await fetch(queue, "b")
    assert (second.attempt, second.consumer, second.envelope) == (2, "b", first.envelope)
    assert await state_of(queue, "job-1") is JobState.RUNNING
    await queue.finish(second, JobState.DONE)
    status = await status_of(queue, "job-1")
    assert (status.state, status.attempts) == (JobState.DONE, 2)
    assert await queue.promote_due() == 0


async def test_dead_letter_keeps_the_job_out_of_the_queue(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for n in (1, 2, 3):
        await queue.enqueue(envelope(n))
    for n in (1, 2):
        delivery = await fetch(queue)
        assert delivery.envelope.job_id == f"job-{n}"
        await queue.dead_letter(delivery, f"boom {n}")
    status = await status_of(queue, "job-1")
    assert (status.state, status.error, status.attempts) == (JobState.DEAD, "boom 1", 1)
    assert status.state.final
    assert await queue.dead_letters() == [("job-2", "boom 2"), ("job-1", "boom 1")]
    assert await queue.dead_letters(count=1) == [("job-2", "boom 2")]
    assert await queue.request_cancel("job-1") is False
    assert (await fetch(queue)).envelope.job_id == "job-3"
    await asyncio.sleep(0.1)  # a visibility timeout
    [left] = await queue.reap("b", 0.05, 10)  # job-3 only: the dead ones were acknowledged
    assert left.envelope.job_id == "job-3"
    assert await queue.fetch("a", NO_WAIT) is None


# --- cancellation ------------------------------------------------------------------------


async def test_cancel_a_queued_job_means_it_never_runs(make_queue: MakeQueue) -> None:
    queue = make_queue()
    await queue.enqueue(envelope(1))
    await queue.enqueue(envelope(2))
    assert await queue.request_cancel("job-1") is True
    assert await state_of(queue, "job-1") is JobState.CANCELLED
    assert await queue.cancel_requested(["job-1"]) == set()
    assert await queue.request_cancel("job-1") is False  # already final

    delivery = await fetch(queue)
    assert delivery.envelope.job_id == "job-2"
    assert await queue.fetch("a", NO_WAIT) is None
    status = await status_of(queue, "job-1")
    assert (status.state, status.attempts) == (JobState.CANCELLED, 0)


async def test_cancel_a_running_job_asks_its_worker(make_queue: MakeQueue) -> None:
    queue = make_queue()
    await queue.enqueue(envelope(1))
    await queue.enqueue(envelope(2))
    delivery = await fetch(queue, "a")
    other = await fetch(queue, "b")
    assert await queue.request_cancel("job-1") is True
    assert await state_of(queue, "job-1") is JobState.RUNNING  # until its worker stops it
    assert await queue.cancel_requested(["job-1", "job-2", "nope"]) == {"job-1"}
    assert await queue.request_cancel("job-1") is True  # still running: asking again is fine
    assert await queue.heartbeat("a", delivery) is True

    await queue.finish(delivery, JobState.CANCELLED, "cancelled")
    status = await status_of(queue, "job-1")
    assert (status.state, status.error) == (JobState.CANCELLED, "cancelled")
    assert await queue.cancel_requested(["job-1", "job-2"]) == set()
    assert await queue.request_cancel("job-1") is False
    await queue.finish(other, JobState.DONE)


async def test_cancel_while_waiting_for_a_retry(make_queue: MakeQueue) -> None:
    queue = make_queue()
    await queue.enqueue(envelope())
    await queue.retry_later(await fetch(queue), 0.1, "flaky")
    assert await queue.request_cancel("job-1") is True
    assert await state_of(queue, "job-1") is JobState.CANCELLED

    async def promoted() -> bool:
        return await queue.promote_due() == 1

    await eventually(promoted, timeout=3.0)
    assert await queue.fetch("a", 0.2) is None
    status = await status_of(queue, "job-1")
    assert (status.state, status.attempts) == (JobState.CANCELLED, 1)


# --- value objects -----------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    job = JobEnvelope(
        "j1",
        "pkg.mod.task",
        {"list": [1, 2.5, None], "nested": {"ok": True}, "text": "é ✓ 🚀"},
        "s1",
        owner="bob",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert JobEnvelope.from_bytes(job.to_bytes()) == job
    bare = JobEnvelope("j2", "op", None, "s2")
    back = JobEnvelope.from_bytes(bare.to_bytes())
    assert back == bare
    assert (back.owner, back.traceparent) == (None, None)
    assert abs(bare.enqueued_at - time.time()) < 60


def test_envelope_refuses_a_payload_that_cannot_travel() -> None:
    with pytest.raises(InvalidEventError, match="JSON"):
        JobEnvelope("j", "op", {"when": object()}, "s").to_bytes()


def test_status_round_trip_and_moves() -> None:
    status = JobStatus("j1", JobState.RUNNING, "op", "s1", 2, "w1", None, 12.5)
    assert JobStatus.from_bytes("j1", status.to_bytes()) == status
    failed = status.moved(JobState.DEAD, error="boom")
    assert (failed.state, failed.error) == (JobState.DEAD, "boom")
    assert (failed.attempts, failed.worker) == (2, "w1")
    assert failed.updated_at > status.updated_at
    assert JobStatus.from_bytes("j1", failed.to_bytes()) == failed
    assert status.state is JobState.RUNNING  # frozen: moved() is a copy
    final = {s for s in JobState if s.final}
    assert final == {JobState.DONE, JobState.FAILED, JobState.DEAD, JobState.CANCELLED}


def test_queue_config_defaults_and_backoff() -> None:
    config = QueueConfig()
    assert (config.redis_url, config.queue_name, config.key_prefix) == (None, "default", "jobs:")
    assert (config.visibility_timeout, config.max_retries, config.retry_backoff) == (30.0, 3, 1.0)
    assert config.operations_registry == {}
    fast = QueueConfig(retry_backoff=0.25, max_retries=0, queue_name="a.b:c-d_1")
    assert [fast.backoff(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]
    assert QueueConfig().backoff(30) == 300.0
    assert isinstance(QueueConfig(retry_backoff=1).backoff(1), float)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[("queue_name", v) for v in ("", "has space", "{tag}", "x" * 65, 5)],
        *[("visibility_timeout", v) for v in (0, -1.0, math.nan, math.inf, True, "30")],
        *[("retry_backoff", v) for v in (0.0, None)],
        *[("max_retries", v) for v in (-1, 1.5, True)],
    ],
)
def test_queue_config_refuses(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=field):
        QueueConfig(**{field: value})
