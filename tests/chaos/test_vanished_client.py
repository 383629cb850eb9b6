"""A client that vanishes without FIN or RST (its packets just stop) gives its lease back within
a minute when the app is served the documented way (`streaming_mw.serving`).

Everything runs inside a network namespace of the test's own, over that namespace's loopback:
the servers (memory and Redis mode), a redis-server, and the clients. The clients' packets are
then dropped there with iptables and the clients killed, as a phone leaving Wi-Fi would.
Needs root, ``ip`` and ``iptables``; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.helpers.redis_server import find_redis_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import IO

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

HOST = "127.0.0.1"
CASES = {  # user -> path: a token every 100 ms, one every 10 s, a followed stream of pings
    "fast": "/direct?user=fast&every=0.1",
    "slow": "/direct?user=slow&every=10",
    "follow": "/follow?user=follow",
}
LIMIT = 60.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test installs it on Debian/Ubuntu)"
    if find_redis_server() is None:
        return "redis-server is not installed"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    name = f"smw-{os.getpid()}-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(
    ns: str,
    *command: str,
    env: dict[str, str] | None = None,
    stdout: int | IO[str] | None = None,
    stderr: int | IO[str] | None = None,
) -> subprocess.Popen[str]:
    """Run ``command`` inside the network namespace ``ns``."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *command], text=True, env=env, stdout=stdout, stderr=stderr
    )


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def read_status(path: Path) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_a_vanished_clients_lease_is_back_within_a_minute(netns: str, tmp_path: Path) -> None:
    started = time.monotonic()
    processes: list[subprocess.Popen[str]] = []
    logs: list[IO[str]] = []
    redis_port, ports = 6390, {"memory": 8101, "redis": 8102}
    try:
        redis = in_ns(
            netns,
            str(find_redis_server()),
            "--port",
            str(redis_port),
            "--bind",
            HOST,
            "--save",
            "",
            stdout=subprocess.DEVNULL,
        )
        processes.append(redis)
        status: dict[str, Path] = {}
        for mode, port in ports.items():
            status[mode] = tmp_path / f"{mode}.json"
            env = {
                **os.environ,
                "STATUS_FILE": str(status[mode]),
                "PING": "5",
                "REDIS_URL": f"redis://{HOST}:{redis_port}/0" if mode == "redis" else "",
            }
            code = (
                "from streaming_mw.serving import run; "
                f"run('tests.apps.vanish:app', '{HOST}', {port}, log_level='warning')"
            )
            log = (tmp_path / f"{mode}.log").open("w")
            logs.append(log)
            processes.append(in_ns(netns, sys.executable, "-c", code, env=env, stderr=log))

        def counts(mode: str) -> Callable[[], dict[str, int]]:
            return lambda: read_status(status[mode])

        def all_held(mode: str) -> Callable[[], bool]:
            return lambda: read_status(status[mode]) == dict.fromkeys(CASES, 1)

        for mode in ports:
            wait_for(counts(mode), 20, f"the {mode} server")

        clients: dict[tuple[str, str], tuple[subprocess.Popen[str], int]] = {}
        for mode, port in ports.items():
            for user, path in CASES.items():
                client = in_ns(
                    netns,
                    sys.executable,
                    "-m",
                    "tests.helpers.hold_client",
                    HOST,
                    str(port),
                    path,
                    stdout=subprocess.PIPE,
                )
                processes.append(client)
                assert client.stdout is not None
                clients[mode, user] = (client, int(client.stdout.readline()))
        for mode in ports:
            wait_for(all_held(mode), 10, f"{mode} leases")

        # The clients' packets stop, both ways; then the clients are gone (their FIN or RST
        # is dropped as well): the server hears nothing more, as from a phone off the network.
        for _, client_port in clients.values():
            for direction in ("--sport", "--dport"):
                rule = ["iptables", "-A", "INPUT", "-p", "tcp", direction, str(client_port)]
                subprocess.run(["ip", "netns", "exec", netns, *rule, "-j", "DROP"], check=True)
        dropped = time.monotonic()
        for client, _ in clients.values():
            client.kill()

        released: dict[tuple[str, str], float] = {}
        while len(released) < len(clients) and time.monotonic() - dropped < LIMIT + 5:
            for mode in ports:
                for user, count in read_status(status[mode]).items():
                    if count == 0 and (mode, user) not in released:
                        released[mode, user] = time.monotonic() - dropped
            time.sleep(0.2)
        figures = ", ".join(f"{m}/{u} {t:.0f}s" for (m, u), t in sorted(released.items()))
        print(f"lease back after the client vanished: {figures}")
        assert set(released) == set(clients), f"still held: {set(clients) - set(released)}"
        assert max(released.values()) <= LIMIT, figures
    finally:
        for process in reversed(processes):
            process.kill()
            process.wait(timeout=10)
        for process in processes:
            if process.stdout is not None:
                process.stdout.close()
        for server_log in logs:
            server_log.close()
        print(f"vanished-client case: {time.monotonic() - started:.1f} s")
