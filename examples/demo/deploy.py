"""A stand-in deployment: a plain sync function, as in the seed, run on the worker pool."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming_mw import DeploymentEmitter

STEPS = ["checkout", "install", "build", "test", "package", "upload", "migrate", "switch"]


def deploy_worker(config: dict[str, Any], emitter: DeploymentEmitter) -> None:
    """Runs in a background thread; each emitter call blocks until the event is accepted."""
    delay = float(config.get("delay", 0.6))
    emitter.log(f"🚀 Starting deployment of {config['app']} to {config['environment']}...")
    for index, step in enumerate(STEPS, start=1):
        emitter.progress(round(100 * (index - 1) / len(STEPS)), step=step)
        for line in range(1, 4):
            time.sleep(delay / 3)
            emitter.log(f"[{step}] line {line} of 3", level="info", step=step)
        if emitter.cancelled:
            return
    emitter.progress(100, step="done")
    emitter.complete(success=True, deployment_id=f"{config['app']}-{int(time.time())}")
