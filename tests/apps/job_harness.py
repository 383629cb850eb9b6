"""Helpers of the multi-process job tests: worker processes, calls to `tests.apps.job_web`,
and the run log of `tests.apps.job_tasks` read back as runs."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.apps.job_tasks import read_runs
from tests.helpers.sse_client import SSEClient

if TYPE_CHECKING:
    from streaming_mw.jobs import JobStatus, RedisJobQueue
    from streaming_mw.sse import SSEEvent

REPO_ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """One worker process; its output goes to ``log_path``."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path):
        self.name, self.log_path = name, log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.pid = self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait for the worker's start-up line (logged once it serves the queue)."""
        deadline = time.monotonic() + timeout
        while f"worker {self.name}: queue" not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready:\n{self.log_text()}")
            await asyncio.sleep(0.05)

    def kill(self) -> float:
        """SIGKILL; returns the time (``time.time()``) by which the process was gone."""
        self.process.kill()
        self.process.wait(timeout=10)
        return time.time()

    async def wait(self, timeout: float) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def settled(queue: RedisJobQueue, job_id: str) -> JobStatus:
    """The job's status once it is final (a worker records it just after the last event)."""
    deadline = time.monotonic() + 5.0
    while True:
        status = await queue.status(job_id)
        if status is not None and status.state.final:
            return status
        assert time.monotonic() < deadline, f"job {job_id} not final within 5s: {status}"
        await asyncio.sleep(0.02)


USER = "alice"
"""The caller every helper names in ``X-User`` (the example app requires one)."""


async def call(base_url: str, method: str, path: str, payload: Any = None, user: str = USER) -> Any:
    headers = {"x-user": user}
    async with SSEClient.connect(
        base_url, path, method=method, json=payload, headers=headers
    ) as client:
        assert client.status == 200, client.status
        return await client.read_json()


async def start_job(base_url: str, operation: str, payload: dict[str, Any]) -> dict[str, str]:
    body = await call(base_url, "POST", f"/jobs/{operation}", payload)
    assert isinstance(body, dict)
    return body


async def read_until_end(client: SSEClient, timeout: float = 10.0) -> list[SSEEvent]:
    assert client.status == 200
    return [event async for event in client.events(timeout)]


async def follow_to_end(base_url: str, stream_id: str, cursor: str | None = None) -> list[SSEEvent]:
    headers = {"x-user": USER} if cursor is None else {"x-user": USER, "last-event-id": cursor}
    async with SSEClient.connect(base_url, f"/streams/{stream_id}", headers=headers) as client:
        return await read_until_end(client)


def data(event: SSEEvent) -> dict[str, Any]:
    doc = json.loads(event.data)
    assert isinstance(doc, dict)
    return doc


def seq(event: SSEEvent) -> int:
    assert event.id is not None
    return int(event.id.rpartition("-")[2])


def runs_of(run_log: Path) -> dict[str, list[dict[str, Any]]]:
    """Per stream, its runs in start order: ``{pid, start, end, how}`` (``how`` is None for a
    run whose process died without a word)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in read_runs(run_log):
        mine = runs.setdefault(line["stream"], [])
        if line["ev"] == "start":
            mine.append({"pid": line["pid"], "start": line["t"], "end": None, "how": None})
            continue
        [run] = [r for r in mine if r["pid"] == line["pid"] and r["how"] is None][-1:]
        run["end"], run["how"] = line["t"], line["ev"]
    return runs


def check_one_at_a_time(runs: list[dict[str, Any]], killed: dict[int, float]) -> None:
    """Each run ended (or its process was killed) before the next one started."""
    for before, after in itertools.pairwise(runs):
        over = before["end"] if before["how"] is not None else killed.get(before["pid"])
        assert over is not None, f"run {before} never ended and its worker was not killed"
        assert over <= after["start"], f"{before} overlaps {after}"
