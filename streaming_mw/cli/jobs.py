"""``streaming-mw jobs list | show JOB_ID | dead-letters | retry JOB_ID``."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..channels.redis import RedisChannelBackend
from ..config import ChannelConfig
from ..emitters import new_stream_id
from ..jobs.model import JobEnvelope, JobState, QueueConfig, new_job_id
from ..jobs.redis import RedisJobQueue
from ._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEM,
    connect,
    fail,
    print_json,
    print_table,
    when,
)

if TYPE_CHECKING:
    import argparse

    from redis.asyncio import Redis

    from ..jobs.model import JobStatus

__all__ = ["run_jobs"]

_RETRYABLE = (JobState.DEAD, JobState.FAILED, JobState.CANCELLED)


def _queue(client: Redis, args: argparse.Namespace) -> RedisJobQueue:
    return RedisJobQueue(client, QueueConfig(queue_name=args.queue, key_prefix=args.job_prefix))


def _doc(status: JobStatus) -> dict[str, Any]:
    return {**asdict(status), "state": status.state.value}


def _rows(statuses: list[JobStatus]) -> list[tuple[object, ...]]:
    return [
        (
            s.job_id,
            s.state.value,
            s.operation,
            s.stream_id,
            s.attempts,
            s.worker,
            when(s.updated_at),
            s.error,
        )
        for s in statuses
    ]


_COLUMNS = ("JOB", "STATE", "OPERATION", "STREAM", "ATTEMPTS", "WORKER", "UPDATED", "ERROR")


async def _list(client: Redis, queue: RedisJobQueue, args: argparse.Namespace) -> int:
    prefix = queue.job_key("")
    ids = [
        (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]
        async for key in client.scan_iter(match=f"{prefix}*", count=1000)
    ]
    statuses = [s for s in [await queue.status(i) for i in ids] if s is not None]
    statuses.sort(key=lambda s: s.updated_at, reverse=True)
    if args.state:
        statuses = [s for s in statuses if s.state.value == args.state]
    return _print_statuses(statuses, args)


def _print_statuses(statuses: list[JobStatus], args: argparse.Namespace) -> int:
    if args.json:
        for status in statuses:
            print_json(_doc(status))
    else:
        print_table(_COLUMNS, _rows(statuses))
    return EXIT_OK


async def _show(queue: RedisJobQueue, args: argparse.Namespace) -> int:
    status = await queue.status(args.job_id)
    if status is None:
        return fail(f"unknown job {args.job_id} in queue {args.queue}", EXIT_NOT_FOUND)
    if args.json:
        print_json(_doc(status))
    else:
        for name, value in _doc(status).items():
            shown = when(value) if name == "updated_at" else ("-" if value is None else value)
            print(f"{name:<12}{shown}")
    return EXIT_OK


async def _dead_letters(queue: RedisJobQueue, args: argparse.Namespace) -> int:
    letters = await queue.dead_letters(args.count)
    if args.json:
        for job_id, error in letters:
            print_json({"job_id": job_id, "error": error})
    else:
        print_table(("JOB", "ERROR"), letters)
    return EXIT_OK


async def _retry(client: Redis, queue: RedisJobQueue, args: argparse.Namespace) -> int:
    """Queue the job's operation and payload again, as a new job with a new stream."""
    status = await queue.status(args.job_id)
    raw = await client.hget(queue.job_key(args.job_id), "env")
    if status is None or raw is None:
        return fail(f"unknown job {args.job_id} in queue {args.queue}", EXIT_NOT_FOUND)
    if status.state not in _RETRYABLE:
        return fail(
            f"job {args.job_id} is {status.state.value}: only ended jobs are retried", EXIT_PROBLEM
        )
    old = JobEnvelope.from_bytes(raw if isinstance(raw, bytes) else raw.encode())
    envelope = JobEnvelope(new_job_id(), old.operation, old.payload, new_stream_id(), old.owner)
    channel = RedisChannelBackend(client, ChannelConfig(key_prefix=args.key_prefix))
    await channel.create(envelope.stream_id, owner=envelope.owner, job_id=envelope.job_id)
    await queue.enqueue(envelope)
    doc = {"retried": args.job_id, "job_id": envelope.job_id, "stream_id": envelope.stream_id}
    if args.json:
        print_json(doc)
    else:
        print(f"queued {envelope.job_id} (stream {envelope.stream_id}) retrying {args.job_id}")
    return EXIT_OK


async def _jobs(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        queue = _queue(client, args)
        if args.jobs_command == "list":
            return await _list(client, queue, args)
        if args.jobs_command == "show":
            return await _show(queue, args)
        if args.jobs_command == "dead-letters":
            return await _dead_letters(queue, args)
        return await _retry(client, queue, args)


def run_jobs(args: argparse.Namespace) -> int:
    return asyncio.run(_jobs(args))
