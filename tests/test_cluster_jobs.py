"""Queued jobs on a Redis Cluster: the web app under uvicorn and a worker process, both given
the URL of one node of the session cluster, run a job end to end."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

from streaming_mw._redis import make_cluster_client
from streaming_mw.config import QueueRedisConfig
from streaming_mw.jobs import QueueConfig, RedisJobQueue
from tests.apps.job_harness import Worker, call, data, follow_to_end, seq, settled, start_job

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.redis_cluster import RedisCluster
    from tests.helpers.uvicorn_server import StartUvicornProcess

pytestmark = pytest.mark.redis


async def test_app_and_worker_run_a_job_on_a_cluster(
    redis_cluster: RedisCluster, uvicorn_process: StartUvicornProcess, tmp_path: Path
) -> None:
    url = redis_cluster.nodes[2].url  # any node will do
    env = {"REDIS_URL": url, "STREAMING_MODE": "redis", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "streaming_mw.worker", "examples.jobs.worker:config"]
    worker = Worker(
        "cluster", [*command, "--concurrency", "2", "--name", "cluster"],
        {**os.environ, **env}, tmp_path / "worker.log",
    )  # fmt: skip
    client = make_cluster_client(QueueRedisConfig(url))
    try:
        await worker.ready()
        app = uvicorn_process("examples.jobs.app:app", env)
        handle = await start_job(app.base_url, "deploy", {"app": "shop", "steps": 3, "delay": 0.05})
        events = await follow_to_end(app.base_url, handle["stream_id"])
        assert [e.event for e in events] == ["log"] + ["progress", "log"] * 3 + ["complete"]
        assert [seq(e) for e in events] == list(range(1, len(events) + 1))
        assert data(events[-1])["deployment_id"].startswith("shop-")
        queue = RedisJobQueue(client, QueueConfig())
        assert (await settled(queue, handle["job_id"])).worker == "cluster"
        status = await call(app.base_url, "GET", f"/jobs/{handle['job_id']}")
        assert status == {"state": "done", "attempts": 1, "error": None}
        assert "(Redis Cluster)" in worker.log_text()
    finally:
        worker.stop()
        await client.aclose()
        print(f"--- worker ---\n{worker.log_text()}")
