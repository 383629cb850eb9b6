"""The npm ``eventsource`` client (``tests/clients/follow.mjs``), run by node in a child process.

``scripts/test`` installs it (``npm ci`` in ``tests/clients``); without node or that install
the tests that need it are skipped, with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, TypedDict

import pytest

CLIENTS = Path(__file__).resolve().parents[1] / "clients"


class Followed(TypedDict):
    """What ``follow.mjs`` prints: the events, each request it made, its final readyState."""

    events: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    readyState: int


def node_or_skip() -> str:
    """The ``node`` binary, or skip the test saying what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH: the npm eventsource client cannot run")
    if not (CLIENTS / "node_modules" / "eventsource").is_dir():
        pytest.skip("npm eventsource not installed: run `npm ci` in tests/clients")
    return node


def start_follow(url: str, seconds: float) -> subprocess.Popen[str]:
    """Start following ``url`` with the npm ``eventsource`` for at most ``seconds``."""
    command = [node_or_skip(), str(CLIENTS / "follow.mjs"), url, str(seconds)]
    return subprocess.Popen(command, cwd=CLIENTS, stdout=subprocess.PIPE, text=True)


def result(process: subprocess.Popen[str], timeout: float) -> Followed:
    """Wait for ``follow.mjs`` to end and parse what it printed."""
    out, _ = process.communicate(timeout=timeout)
    followed: Followed = json.loads(out.strip().splitlines()[-1])
    return followed
