"""The ``streaming-mw`` command: run a job worker, and look at what a Redis holds.

- ``streaming-mw worker module:config`` runs a job worker;
- ``streaming-mw doctor`` checks the Redis streaming_mw uses;
- ``streaming-mw streams list`` shows the streams live now in every web process;
- ``streaming-mw streams tail STREAM_ID`` prints a stream's history, then follows it;
- ``streaming-mw jobs list | show JOB_ID | dead-letters | retry JOB_ID``.

Exit codes: 0 done, 1 a check failed or an action was refused, 2 bad arguments or
configuration, 3 Redis unreachable, 4 unknown stream or job. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..errors import (
    BackendUnavailableError,
    InvalidCursorError,
    InvalidStreamIdError,
    StreamingError,
    StreamNotFoundError,
)
from ._common import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, add_common, fail
from .doctor import run_doctor
from .jobs import run_jobs
from .streams import run_list, run_tail
from .worker import add_worker_arguments, load_config, run_worker, worker_main

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "load_config", "main", "worker_main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``streaming-mw`` argument parser."""
    parser = argparse.ArgumentParser(prog="streaming-mw", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = add_worker_arguments(commands.add_parser("worker", help="run a job worker"))
    worker.set_defaults(run=run_worker)
    doctor = add_common(commands.add_parser("doctor", help="check the Redis streaming_mw uses"))
    doctor.set_defaults(run=run_doctor)

    streams = commands.add_parser("streams", help="live streams and their events")
    stream_commands = streams.add_subparsers(dest="streams_command", required=True)
    listing = add_common(stream_commands.add_parser("list", help="streams live now"))
    listing.set_defaults(run=run_list)
    tail = add_common(stream_commands.add_parser("tail", help="history, then live events"))
    tail.add_argument("stream_id")
    tail.add_argument("--from", dest="cursor", help="start strictly after this cursor")
    tail.set_defaults(run=run_tail)

    jobs = commands.add_parser("jobs", help="queued, running and dead jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    job_list = add_common(job_commands.add_parser("list", help="jobs the queue knows"))
    job_list.add_argument("--state", help="only jobs in this state (queued, dead, …)")
    show = add_common(job_commands.add_parser("show", help="one job"))
    show.add_argument("job_id")
    dead = add_common(job_commands.add_parser("dead-letters", help="dead-lettered jobs"))
    dead.add_argument("--count", type=int, default=100, help="newest N (default 100)")
    retry = add_common(job_commands.add_parser("retry", help="queue an ended job again"))
    retry.add_argument("job_id")
    for sub in (job_list, show, dead, retry):
        sub.set_defaults(run=run_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``streaming-mw <command> …``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except BackendUnavailableError as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except StreamNotFoundError as exc:
        return fail(f"unknown stream {exc.stream_id}", EXIT_NOT_FOUND)
    except (InvalidStreamIdError, InvalidCursorError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except StreamingError as exc:
        return fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `streaming-mw streams tail … | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
