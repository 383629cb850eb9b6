"""The worker process: ``streaming-mw worker examples.jobs.worker:config --concurrency 4``
(or ``python -m streaming_mw.worker examples.jobs.worker:config``). Needs ``REDIS_URL``.

The seed's registry style: processors are registered by dotted name on the config.
"""

from __future__ import annotations

import os

from streaming_mw import QueueConfig

from .tasks import deploy_task, flaky_task, import_task

config = QueueConfig(
    redis_url=os.environ.get("REDIS_URL"),
    visibility_timeout=float(os.environ.get("JOBS_VISIBILITY_TIMEOUT", "10")),
    max_retries=int(os.environ.get("JOBS_MAX_RETRIES", "3")),
    retry_backoff=float(os.environ.get("JOBS_RETRY_BACKOFF", "1")),
)
config.operations_registry["examples.jobs.tasks.deploy_task"] = deploy_task
config.operations_registry["examples.jobs.tasks.import_task"] = import_task
config.operations_registry["examples.jobs.tasks.flaky_task"] = flaky_task
