"""The operator commands of ``streaming-mw`` against the session redis-server: ``doctor``,
``streams list`` / ``tail``, ``jobs list | show | dead-letters | retry``; errors as one line on
stderr with an exit code, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from streaming_mw._redis import make_client
from streaming_mw.channels import AsyncStreamChannel
from streaming_mw.channels.redis import RedisChannelBackend, StreamKeys, SyncRedisChannel
from streaming_mw.cli import main
from streaming_mw.config import ChannelConfig, QueueRedisConfig
from streaming_mw.emitters import new_stream_id
from streaming_mw.events import EventType, StreamEvent
from streaming_mw.jobs import JobEnvelope, JobState, QueueConfig, RedisJobQueue
from streaming_mw.jobs.model import new_job_id
from tests.helpers.redis_server import free_port

pytestmark = pytest.mark.redis

ENTRY_POINT = Path(sys.executable).with_name("streaming-mw")


@pytest.fixture
def url(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """REDIS_URL of an empty session redis-server."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    monkeypatch.setenv("REDIS_URL", redis_url)
    return redis_url


async def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in a thread (it runs its own event loop, as the command does)."""
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


DEPLOY_EVENTS = [
    StreamEvent(EventType.LOG, {"message": "start", "level": "info"}),
    StreamEvent(EventType.PROGRESS, {"percent": 50, "step": "build"}),
    StreamEvent(EventType.COMPLETE, {"success": True}),
]


async def _deploy_stream(url: str, stream_id: str) -> list[str]:
    """A finished deploy stream: log, progress, complete; returns the cursors."""
    client = make_client(QueueRedisConfig(url))
    channel = AsyncStreamChannel(RedisChannelBackend(client), ChannelConfig())
    try:
        meta = await channel.create(stream_id, owner="alice")
        return [f"{meta.epoch}-{await channel.publish(stream_id, e)}" for e in DEPLOY_EVENTS]
    finally:
        await client.aclose()


async def deploy_stream(url: str, stream_id: str = "deploy-1") -> list[str]:
    return await _deploy_stream(url, stream_id)


# doctor ----------------------------------------------------------------------------------------


async def test_doctor_names_the_mode_and_counts_key_families(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await deploy_stream(url)
    code, out, _ = await run(["doctor"], capsys)
    assert code == 0
    assert "mode        standalone" in out
    assert "server      redis " in out
    assert "pubsub      ok" in out
    assert "streams     ok" in out
    code, out, _ = await run(["doctor", "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert report["mode"] == "standalone"
    assert report["pubsub"] is True
    assert report["streams"] is True
    assert report["keys"]["stream meta"] == 1
    assert report["keys"]["stream events"] == 1
    assert report["keys"]["job records"] == 0
    assert report["latency_ms"] >= 0
    assert report["warnings"] == []


async def test_doctor_warns_on_an_evicting_memory_policy(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = redis.Redis.from_url(url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, out, _ = await run(["doctor"], capsys)
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()
    assert code == 0
    assert "warning     maxmemory-policy allkeys-lru evicts" in out


@pytest.mark.parametrize(
    "argv",
    [["doctor"], ["streams", "tail", "x"], ["streams", "list"], ["jobs", "list"]],
    ids=["doctor", "tail", "list", "jobs"],
)
async def test_a_closed_port_is_one_line_on_stderr(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = await run(argv, capsys)
    assert code == 3
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("streaming-mw: Redis unavailable")


async def test_no_redis_configured_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, _, err = await run(["doctor"], capsys)
    assert code == 2
    assert err == "streaming-mw: no Redis: set REDIS_URL or pass --redis-url\n"
    code, _, err = await run(["streams", "list"], capsys)
    assert code == 2
    assert "without Redis each web process sees only its own streams" in err
    assert len(err.splitlines()) == 1


# streams tail --------------------------------------------------------------------------------


async def test_tail_prints_a_finished_stream_in_order_and_exits_0(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cursors = await deploy_stream(url)
    code, out, _ = await run(["streams", "tail", "deploy-1", "--json"], capsys)
    assert code == 0
    lines = json_lines(out)
    assert [line["event"] for line in lines] == ["log", "progress", "complete"]
    assert [line["id"] for line in lines] == cursors
    assert lines[1]["data"] == {"percent": 50, "step": "build"}
    code, out, _ = await run(["streams", "tail", "deploy-1"], capsys)
    assert code == 0
    assert [line.split()[1:3] for line in out.splitlines()] == [
        [cursors[0], "log"],
        [cursors[1], "progress"],
        [cursors[2], "complete"],
    ]


async def test_tail_from_a_cursor_prints_only_what_follows(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cursors = await deploy_stream(url)
    code, out, _ = await run(
        ["streams", "tail", "deploy-1", "--json", "--from", cursors[0]], capsys
    )
    assert code == 0
    assert [line["id"] for line in json_lines(out)] == cursors[1:]


async def test_tail_follows_live_until_the_terminal_event(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = redis.Redis.from_url(url)
    channel = SyncRedisChannel(admin)
    channel.create("live-1")
    live = StreamKeys("stream:", "live-1").live

    def publish_when_followed() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not admin.pubsub_numsub(live)[0][1]:
            time.sleep(0.05)
        channel.publish("live-1", StreamEvent(EventType.LOG, {"message": "live"}))
        channel.publish("live-1", StreamEvent(EventType.ERROR, {"message": "boom"}))

    publisher = threading.Thread(target=publish_when_followed)
    publisher.start()
    try:
        code, out, _ = await run(["streams", "tail", "live-1", "--json"], capsys)
    finally:
        publisher.join()
        admin.close()
    assert code == 0
    assert [line["event"] for line in json_lines(out)] == ["log", "error"]


async def test_tail_of_an_unknown_stream_exits_4(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(["streams", "tail", "nope"], capsys)
    assert (code, out, err) == (4, "", "streaming-mw: unknown stream nope\n")
    code, _, err = await run(["streams", "tail", "bad id!"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1


# jobs ------------------------------------------------------------------------------------------


async def _jobs(url: str) -> None:
    """Three jobs: one queued, one done, one dead-lettered (with its envelope kept)."""
    client = make_client(QueueRedisConfig(url))
    queue = RedisJobQueue(client, QueueConfig())
    try:
        for job_id in ("job-dead", "job-done", "job-queued"):
            await queue.enqueue(JobEnvelope(job_id, "deploy", {"n": 1}, f"s-{job_id}", "alice"))
        for job_id, ending in (("job-dead", "dead"), ("job-done", "done")):
            delivery = await queue.fetch("w1", 1.0)
            assert delivery is not None
            assert delivery.envelope.job_id == job_id
            if ending == "dead":
                await queue.dead_letter(delivery, "boom")
            else:
                await queue.finish(delivery, JobState.DONE)
    finally:
        await client.aclose()


async def test_jobs_list_show_and_dead_letters(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _jobs(url)
    code, out, _ = await run(["jobs", "list", "--json"], capsys)
    assert code == 0
    states = {row["job_id"]: row["state"] for row in json_lines(out)}
    assert states == {"job-dead": "dead", "job-done": "done", "job-queued": "queued"}
    code, out, _ = await run(["jobs", "list", "--state", "dead"], capsys)
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["JOB", "STATE", "OPERATION"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["job-dead"]
    code, out, _ = await run(["jobs", "show", "job-dead", "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    assert (shown["state"], shown["error"], shown["stream_id"]) == ("dead", "boom", "s-job-dead")
    code, out, _ = await run(["jobs", "show", "job-dead"], capsys)
    assert "state       dead" in out
    code, out, _ = await run(["jobs", "dead-letters", "--json"], capsys)
    assert code == 0
    assert json_lines(out) == [{"job_id": "job-dead", "error": "boom"}]
    code, out, err = await run(["jobs", "show", "nope"], capsys)
    assert (code, out, err) == (4, "", "streaming-mw: unknown job nope in queue default\n")


async def test_jobs_retry_queues_an_ended_job_again(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _jobs(url)
    code, out, _ = await run(["jobs", "retry", "job-dead", "--json"], capsys)
    assert code == 0
    retried = json.loads(out)
    assert retried["retried"] == "job-dead"
    code, out, _ = await run(["jobs", "show", retried["job_id"], "--json"], capsys)
    shown = json.loads(out)
    assert (shown["state"], shown["operation"]) == ("queued", "deploy")
    assert shown["stream_id"] == retried["stream_id"]
    admin = redis.Redis.from_url(url)
    try:
        meta = admin.hgetall(StreamKeys("stream:", retried["stream_id"]).meta)
    finally:
        admin.close()
    assert meta[b"owner"] == b"alice"
    assert meta[b"job"] == retried["job_id"].encode()
    code, _, err = await run(["jobs", "retry", "job-queued"], capsys)
    assert code == 1
    assert err == "streaming-mw: job job-queued is queued: only ended jobs are retried\n"
    code, _, _ = await run(["jobs", "retry", "nope"], capsys)
    assert code == 4


# the entry point, in a real subprocess -------------------------------------------------------


def test_the_installed_entry_point_runs_doctor_and_fails_cleanly(url: str) -> None:
    env = {**os.environ, "REDIS_URL": url}
    done = subprocess.run(
        [str(ENTRY_POINT), "doctor"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "standalone" in done.stdout
    admin = redis.Redis.from_url(url)
    channel = SyncRedisChannel(admin)
    channel.create("deploy-1")
    for event in DEPLOY_EVENTS:
        channel.publish("deploy-1", event)
    admin.close()
    done = subprocess.run(
        [str(ENTRY_POINT), "streams", "tail", "deploy-1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["event"] for x in done.stdout.splitlines()] == [
        "log",
        "progress",
        "complete",
    ]
    env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [str(ENTRY_POINT), "doctor"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 3
    assert len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("new_id", [new_job_id, new_stream_id])
def test_generated_ids_never_start_with_a_dash_so_the_cli_takes_them(
    new_id: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One id in 64 from `secrets.token_urlsafe` starts with ``-``, which argparse reads as an
    option: ``streaming-mw jobs show -x...`` failed (a retried job's new id, in this suite)."""
    drawn = iter(["-looks-like-an-option", "Xq3-fine_id"])
    monkeypatch.setattr("secrets.token_urlsafe", lambda nbytes: next(drawn))
    assert callable(new_id)
    assert new_id() == "Xq3-fine_id"
