"""Jobs across processes: the web app under uvicorn and workers as separate OS processes, all
on the session redis-server. Workers are killed (SIGKILL) and stopped (SIGTERM) mid-job; the
processors of `tests.apps.job_tasks` record every run, so the tests can show that no job was
lost and none ran twice at the same time."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from streaming_mw.jobs import JobState, QueueConfig, RedisJobQueue
from tests.apps.job_harness import (
    USER,
    Worker,
    call,
    check_one_at_a_time,
    data,
    follow_to_end,
    read_until_end,
    runs_of,
    seq,
    settled,
    start_job,
)
from tests.apps.job_tasks import CRASH, SLOW, read_runs
from tests.helpers.leases import eventually
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis.asyncio

    from tests.helpers.uvicorn_server import StartUvicornProcess

pytestmark = pytest.mark.redis

AS_USER = {"x-user": USER}  # the example app takes its caller from X-User

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("streaming-mw"))
TASKS = "tests.apps.job_tasks:config"
EXAMPLE = "examples.jobs.worker:config"
WEB = "tests.apps.job_web:app"


class StartWorker(Protocol):
    def __call__(
        self, name: str, *, config: str = TASKS, script: bool = False, **env: str
    ) -> Worker: ...


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.jsonl"


@pytest.fixture
def env(redis_url: str, run_log: Path) -> dict[str, str]:
    """Environment of the app and the workers: Redis only, short timings."""
    return {
        "REDIS_URL": redis_url,
        "STREAMING_MODE": "redis",
        "JOBS_VISIBILITY_TIMEOUT": "1",
        "JOBS_RETRY_BACKOFF": "0.1",
        "JOBS_MAX_RETRIES": "3",
        "JOBS_RUN_LOG": str(run_log),
    }


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Starts worker processes (``python -m streaming_mw.worker``, or the console script);
    every one still running at teardown is stopped, and its log printed."""
    workers: list[Worker] = []

    def start(name: str, *, config: str = TASKS, script: bool = False, **extra: str) -> Worker:
        module = [sys.executable, "-m", "streaming_mw.worker"]
        entry = [CONSOLE_SCRIPT, "worker"] if script else module
        command = [*entry, config, "--concurrency", "2", "--name", name]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env, **extra}
        worker = Worker(name, command, full_env, tmp_path / f"worker-{name}.log")
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            print(f"--- worker {worker.name} (pid {worker.pid}) ---\n{worker.log_text()}")


@pytest.fixture
def queue(redis_client: redis.asyncio.Redis) -> RedisJobQueue:
    """The queue the app and the workers share, on an emptied database."""
    return RedisJobQueue(redis_client, QueueConfig())


async def test_example_app_and_module_worker_run_a_job(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
) -> None:
    worker = start_worker("solo", config=EXAMPLE)
    app = uvicorn_process("examples.jobs.app:app", env)
    await worker.ready()
    handle = await start_job(app.base_url, "deploy", {"app": "shop", "steps": 3, "delay": 0.05})
    events = await follow_to_end(app.base_url, handle["stream_id"])
    assert [e.event for e in events] == ["log"] + ["progress", "log"] * 3 + ["complete"]
    assert [seq(e) for e in events] == list(range(1, len(events) + 1))
    assert [data(e)["percent"] for e in events if e.event == "progress"] == [33, 67, 100]
    assert data(events[-1])["deployment_id"].startswith("shop-")
    assert (await settled(queue, handle["job_id"])).worker == "solo"
    status = await call(app.base_url, "GET", f"/jobs/{handle['job_id']}")
    assert status == {"state": "done", "attempts": 1, "error": None}


async def test_console_script_worker_runs_an_async_job(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
) -> None:
    worker = start_worker("scripted", config=EXAMPLE, script=True)
    app = uvicorn_process("examples.jobs.app:app", env)
    await worker.ready()
    assert "2 slot(s)" in worker.log_text()
    handle = await start_job(app.base_url, "import", {"rows": 50, "delay": 0.01})
    events = await follow_to_end(app.base_url, handle["stream_id"])
    assert [e.event for e in events] == ["progress"] * 10 + ["complete"]
    assert data(events[-1]) == {"success": True, "rows": 50}
    assert (await settled(queue, handle["job_id"])).worker == "scripted"
    status = await call(app.base_url, "GET", f"/jobs/{handle['job_id']}")
    assert status == {"state": "done", "attempts": 1, "error": None}


async def test_a_job_failing_every_attempt_is_dead_lettered(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
) -> None:
    worker = start_worker("flaky", config=EXAMPLE, JOBS_MAX_RETRIES="2")
    app = uvicorn_process("examples.jobs.app:app", env)
    await worker.ready()
    handle = await start_job(app.base_url, "flaky", {"error": "db down"})
    events = await follow_to_end(app.base_url, handle["stream_id"])
    messages = [data(e)["message"] for e in events[:-1]]
    assert messages.count("trying…") == 3
    # by default the stream names an error id, never the exception's text
    assert [
        m
        for m in messages
        if re.fullmatch(
            r"attempt 2 failed \(error_id [0-9a-f]{12}\); "
            r"retrying in 0\.2s",
            m,
        )
    ]
    assert not [e for e in events if "db down" in e.data]
    assert events[-1].event == "error"
    last = data(events[-1])
    assert last == {
        "message": f"job failed after 3 attempt(s) (error_id {last['error_id']})",
        "reason": "dead_letter",
        "error_id": last["error_id"],
    }
    status = await call(app.base_url, "GET", f"/jobs/{handle['job_id']}")
    assert status == {"state": "dead", "attempts": 3, "error": "RuntimeError: db down"}
    assert await queue.dead_letters() == [(handle["job_id"], "RuntimeError: db down")]
    assert (await settled(queue, handle["job_id"])).state is JobState.DEAD


async def test_no_worker_then_a_worker_comes(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    run_log: Path,
) -> None:
    app = uvicorn_process(WEB, {**env, "JOBS_MAX_IDLE_TIME": "1"})
    handle = await start_job(app.base_url, SLOW, {"steps": 2, "delay": 0.05})
    started = time.monotonic()
    [error] = await follow_to_end(app.base_url, handle["stream_id"])
    assert 0.9 <= time.monotonic() - started < 3.0
    assert error.event == "error"
    assert data(error)["reason"] == "no_worker"
    assert data(error)["job_id"] == handle["job_id"]
    assert read_runs(run_log) == []

    worker = start_worker("late")
    await worker.ready()  # a follow before it serves the queue would time out again
    events = await follow_to_end(app.base_url, handle["stream_id"])
    assert [e.event for e in events] == ["progress", "progress", "complete"]
    assert data(events[-1]) == {"success": True, "pid": worker.pid}


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_mid_job_the_other_worker_completes_it_20_trials(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
    run_log: Path,
) -> None:
    pool = {name: start_worker(name) for name in ("w-a", "w-b")}
    app = uvicorn_process(WEB, env)
    await asyncio.gather(*(w.ready() for w in pool.values()))
    killed: dict[int, float] = {}
    jobs: list[dict[str, str]] = []
    for trial in range(20):
        handle = await start_job(app.base_url, SLOW, {"steps": 8, "delay": 0.1})
        jobs.append(handle)
        stream = f"/streams/{handle['stream_id']}"
        async with SSEClient.connect(app.base_url, stream) as client:
            first = await client.next_event()
            assert first.event == "progress", first
            cursor = client.last_event_id
        status = await queue.status(handle["job_id"])
        assert status is not None
        assert status.state is JobState.RUNNING
        assert status.worker in pool, status
        victim = pool.pop(status.worker)
        killed[victim.pid] = victim.kill()
        replacement = start_worker(f"w-{trial}")
        pool[replacement.name] = replacement

        rest = await follow_to_end(app.base_url, handle["stream_id"], cursor)
        assert [seq(e) for e in rest] == list(range(seq(first) + 1, seq(first) + 1 + len(rest)))
        assert rest[-1].event == "complete", rest[-1]
        finisher = data(rest[-1])["pid"]
        assert finisher != victim.pid
        assert finisher in {w.pid for w in pool.values()}
        assert [data(e)["message"] for e in rest if e.event == "log"] == ["attempt 2 of 4"]
        await replacement.ready()

    for handle in jobs:
        status = await settled(queue, handle["job_id"])
        assert (status.state, status.attempts) == (JobState.DONE, 2)
    runs = runs_of(run_log)
    assert set(runs) == {handle["stream_id"] for handle in jobs}
    for stream_id, mine in runs.items():
        assert [r["how"] for r in mine] == [None, "end"], (stream_id, mine)
        assert mine[0]["pid"] in killed
        check_one_at_a_time(mine, killed)
    assert await queue.dead_letters() == []
    pending = await queue._client.xpending(queue.ready, "workers")
    assert pending["pending"] == 0


async def test_sigterm_finishes_running_jobs_and_takes_no_new_one(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
    run_log: Path,
) -> None:
    busy = start_worker("busy")
    app = uvicorn_process(WEB, env)
    await busy.ready()
    jobs = [await start_job(app.base_url, SLOW, {"steps": 5, "delay": 0.1}) for _ in range(3)]

    async def states() -> list[JobState]:
        found = [await queue.status(job["job_id"]) for job in jobs]
        return [status.state if status else JobState.DEAD for status in found]

    async def two_running() -> bool:
        return (await states()).count(JobState.RUNNING) == 2

    await eventually(two_running, timeout=10.0)
    sent = time.monotonic()
    busy.process.send_signal(signal.SIGTERM)
    assert await busy.wait(timeout=10) == 0
    assert time.monotonic() - sent < 1.0 + 2.0  # the running jobs took < visibility timeout
    assert sorted(await states()) == sorted([JobState.DONE, JobState.DONE, JobState.QUEUED])

    other = start_worker("other")
    finished = [await follow_to_end(app.base_url, job["stream_id"]) for job in jobs]
    assert [events[-1].event for events in finished] == ["complete"] * 3
    pids = sorted(data(events[-1])["pid"] for events in finished)
    assert pids == sorted([busy.pid, busy.pid, other.pid])
    for job in jobs:  # "end" is recorded after the last event; a final state after that
        await settled(queue, job["job_id"])
    runs = runs_of(run_log)
    assert all([r["how"] for r in runs[job["stream_id"]]] == ["end"] for job in jobs), runs


async def test_sigterm_leaves_a_long_job_to_another_worker(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
    run_log: Path,
) -> None:
    busy = start_worker("busy")
    app = uvicorn_process(WEB, env)
    await busy.ready()
    # 5 s of work: far more than the 1 s grace left after the other worker's start-up, however
    # slow that start-up is on a loaded machine, so the busy worker cannot finish it itself.
    handle = await start_job(app.base_url, SLOW, {"steps": 50, "delay": 0.1})
    async with SSEClient.connect(
        app.base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        first = await client.next_event()
        assert first.event == "progress"
        other = start_worker("other")
        await other.ready()
        busy.process.send_signal(signal.SIGTERM)
        rest = await read_until_end(client)
    assert await busy.wait(timeout=10) == 0
    assert rest[-1].event == "complete"
    assert data(rest[-1])["pid"] == other.pid
    assert "attempt 2 of 4" in [data(e)["message"] for e in rest if e.event == "log"]
    status = await settled(queue, handle["job_id"])
    assert (status.state, status.attempts, status.worker) == (JobState.DONE, 2, "other")
    [mine] = runs_of(run_log).values()
    assert [r["pid"] for r in mine] == [busy.pid, other.pid]
    assert mine[1]["how"] == "end"
    check_one_at_a_time(mine, {})


async def test_a_paused_worker_that_lost_its_job_does_not_end_the_stream(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
    run_log: Path,
) -> None:
    """SIGSTOP (a long pause) past the visibility timeout: the job is taken over; on SIGCONT
    the old worker finds it lost and stops it without publishing for it."""
    pool = {name: start_worker(name) for name in ("w-a", "w-b")}
    app = uvicorn_process(WEB, env)
    await asyncio.gather(*(w.ready() for w in pool.values()))
    handle = await start_job(app.base_url, SLOW, {"steps": 20, "delay": 0.1})
    async with SSEClient.connect(
        app.base_url, f"/streams/{handle['stream_id']}", headers=AS_USER
    ) as client:
        assert (await client.next_event()).event == "progress"
        status = await queue.status(handle["job_id"])
        assert status is not None
        assert status.worker in pool
        paused = pool.pop(status.worker)
        [other] = pool.values()
        os.kill(paused.pid, signal.SIGSTOP)
        try:

            async def taken_over() -> bool:
                status = await queue.status(handle["job_id"])
                return status is not None and status.worker == other.name

            await eventually(taken_over, timeout=10.0)
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        rest = await read_until_end(client)
    terminal = rest[-1]
    assert [e.event for e in rest].count("complete") == 1
    assert terminal.event == "complete"
    assert data(terminal) == {"success": True, "pid": other.pid}
    status = await settled(queue, handle["job_id"])
    assert (status.state, status.attempts, status.worker) == (JobState.DONE, 2, other.name)

    async def stale_stopped() -> bool:  # the resumed worker stops at its next check
        return runs_of(run_log)[handle["stream_id"]][0]["how"] is not None

    await eventually(stale_stopped, timeout=10.0)
    [stale, fresh] = runs_of(run_log)[handle["stream_id"]]
    assert (stale["pid"], fresh["pid"], fresh["how"]) == (paused.pid, other.pid, "end")
    assert stale["how"] in {"stopped", "abort"}  # told to stop once it found the job lost


async def test_a_job_that_crashes_every_worker_is_dead_lettered(
    uvicorn_process: StartUvicornProcess,
    start_worker: StartWorker,
    env: dict[str, str],
    queue: RedisJobQueue,
    run_log: Path,
) -> None:
    """A poison job (its worker dies on every attempt, like an OOM kill) must not be handed
    out forever: past ``1 + max_retries`` deliveries it goes to the dead-letter stream."""
    app = uvicorn_process(WEB, env)
    handle = await start_job(app.base_url, CRASH, {})
    crashed = []
    for attempt in (1, 2):  # 1 + JOBS_MAX_RETRIES=1 attempts, each taking a worker down
        worker = start_worker(f"doomed-{attempt}", JOBS_MAX_RETRIES="1")
        assert await worker.wait(timeout=15) == -signal.SIGKILL
        crashed.append(worker.pid)
    assert [(r["pid"], r["how"]) for r in runs_of(run_log)[handle["stream_id"]]] == [
        (pid, None) for pid in crashed
    ]

    survivor = start_worker("survivor", JOBS_MAX_RETRIES="1")
    await survivor.ready()
    status = await settled(queue, handle["job_id"])
    assert status.state is JobState.DEAD
    events = await follow_to_end(app.base_url, handle["stream_id"])
    assert events[-1].event == "error"
    assert data(events[-1])["reason"] == "dead_letter"
    assert [job_id for job_id, _ in await queue.dead_letters()] == [handle["job_id"]]
    assert len(runs_of(run_log)[handle["stream_id"]]) == 2  # no third run
    assert survivor.process.poll() is None
