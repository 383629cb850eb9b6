"""``python -m streaming_mw.worker module:config --concurrency N``: run a job worker."""

from __future__ import annotations

import sys

from .cli import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
