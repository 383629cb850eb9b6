"""``streaming-mw worker module:config --concurrency N``: run a job worker."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, StreamingError
from ..jobs.model import QueueConfig
from ..runtime.queue_worker import QueueWorker

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["add_worker_arguments", "load_config", "run_worker", "worker_main"]


def load_config(target: str) -> QueueConfig:
    """Import ``module:attribute`` (a `QueueConfig`, or a callable returning one)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"expected module:attribute, got {target!r}")
    sys.path.insert(0, "")
    value = getattr(importlib.import_module(module_name), attribute)
    if callable(value) and not isinstance(value, QueueConfig):
        value = value()
    if not isinstance(value, QueueConfig):
        raise ConfigurationError(f"{target} is not a QueueConfig (got {type(value).__name__})")
    return value


def add_worker_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="module:attribute of a QueueConfig")
    parser.add_argument("--concurrency", "-c", type=int, default=4, help="jobs run at once")
    parser.add_argument("--name", help="worker name (default host:pid:random)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def run_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        worker = QueueWorker(config, args.concurrency, name=args.name)
        asyncio.run(worker.start())
    except StreamingError as exc:
        print(f"streaming-mw worker: {exc}", file=sys.stderr)
        return 2
    return 0


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m streaming_mw.worker module:config [--concurrency N]``."""
    parser = add_worker_arguments(argparse.ArgumentParser(prog="python -m streaming_mw.worker"))
    return run_worker(parser.parse_args(argv))
