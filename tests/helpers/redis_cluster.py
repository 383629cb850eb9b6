"""A real local Redis Cluster: ``redis-server --cluster-enabled yes`` nodes joined by
``redis-cli --cluster create``, for tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Self

from redis.crc import key_slot

from tests.helpers.redis_server import LOCALHOST, RedisServer, find_redis_server, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import TracebackType

    from streaming_mw.channels.stream import Follower
    from streaming_mw.events import StreamEvent

BUS_OFFSET = 10000
"""A cluster node's bus listens on its port + 10000."""


def _bindable(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int], host: str = LOCALHOST) -> int:
    """A free port whose bus port (port + 10000) is valid and free too, not in ``taken``."""
    for _ in range(1000):
        port = free_port(host)
        bus = port + BUS_OFFSET
        if port in taken or bus in taken or bus > 65535:
            continue
        if _bindable(bus, host):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) found")


def find_redis_cli() -> str | None:
    """Return the path of the ``redis-cli`` binary on PATH, or None."""
    return shutil.which("redis-cli")


class ClusterNode(RedisServer):
    """One ``redis-server`` in cluster mode, with its own ``nodes-<port>.conf``."""

    node_timeout_ms = 1500

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
        ]  # fmt: skip

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``redis-cli -p <port> <args>`` against this node and return its output."""
        cli = find_redis_cli() or "redis-cli"
        command = [cli, "-h", self.host, "-p", str(self.port), *args]
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=True)
        return result.stdout.decode(errors="replace")

    def info_field(self, section: str, field: str) -> str | None:
        """One ``field:value`` of ``INFO <section>``, or None."""
        for line in self.cli("INFO", section).splitlines():
            name, _, value = line.strip().partition(":")
            if name == field:
                return value
        return None


class RedisCluster:
    """``masters`` master nodes with ``replicas`` replicas each, on free ports of 127.0.0.1.

    ``start`` kills every node it started when any step fails, so a half-made cluster never
    outlives the fixture.
    """

    host = LOCALHOST

    def __init__(
        self,
        binary: str,
        cli: str,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        startup_timeout: float = 20.0,
    ) -> None:
        self.cli = cli
        self.replicas = replicas
        self.startup_timeout = startup_timeout
        taken: set[int] = set()
        self.nodes: list[ClusterNode] = []
        for _ in range(masters * (1 + replicas)):
            port = free_cluster_port(taken)
            taken.update((port, port + BUS_OFFSET))
            self.nodes.append(ClusterNode(binary, directory, port=port))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of the first node (any node will do)."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, create the cluster and wait until every node says it is ok."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"{node.host}:{node.port}" for node in self.nodes]
            subprocess.run(
                [self.cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, timeout=self.startup_timeout, check=True,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every other."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        running = [node for node in self.nodes if node.is_running()]
        while time.monotonic() < deadline:
            if all(self._node_ok(node, len(self.nodes)) for node in running):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok in time")

    @staticmethod
    def _node_ok(node: ClusterNode, known: int) -> bool:
        try:
            info = node.cli("CLUSTER", "INFO")
        except (subprocess.SubprocessError, OSError):
            return False
        fields: dict[str, str] = {}
        for line in info.splitlines():
            name, _, value = line.strip().partition(":")
            fields[name] = value
        ok = fields.get("cluster_state") == "ok"
        return ok and fields.get("cluster_known_nodes") == str(known)

    def wait_replicas(self, timeout: float | None = None) -> None:
        """Wait until every running replica's link to its master is up and in sync."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            replicas = [
                node
                for node in self.nodes
                if node.is_running() and node.info_field("replication", "role") == "slave"
            ]
            if len(replicas) == len(self.nodes) - len(self.nodes) // (1 + self.replicas) and all(
                node.info_field("replication", "master_link_status") == "up"
                and node.info_field("replication", "master_sync_in_progress") == "0"
                for node in replicas
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster's replicas did not come in sync in time")

    def slot_ranges(self) -> list[tuple[int, int, ClusterNode]]:
        """``(first, last, master)`` for every slot range a running master owns."""
        ranges: list[tuple[int, int, ClusterNode]] = []
        for node in self.nodes:
            if not node.is_running():
                continue
            for line in node.cli("CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "myself" not in parts[2] or "master" not in parts[2]:
                    continue
                for span in parts[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit():
                        ranges.append((int(low), int(high or low), node))
        return ranges

    def master_for(self, key: str) -> ClusterNode:
        """The running master that owns the slot of ``key``."""
        slot = key_slot(key.encode())
        for low, high, node in self.slot_ranges():
            if low <= slot <= high:
                return node
        raise LookupError(f"no running master owns slot {slot}")

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a short wait)."""
        for node in self.nodes:
            node.stop(timeout=5.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def own_cluster(tmp_path: Path, *, masters: int = 3, replicas: int = 0) -> Iterator[RedisCluster]:
    """A cluster of the calling test's own, for a test that moves slots or kills nodes (which
    the session cluster must not see); with replicas, yielded once they have synced."""
    binary, cli = find_redis_server(), find_redis_cli()
    assert binary is not None
    assert cli is not None
    with RedisCluster(binary, cli, tmp_path, masters=masters, replicas=replicas) as cluster:
        if replicas:
            cluster.wait_replicas()
        yield cluster


async def read_all(follower: Follower) -> list[StreamEvent]:
    """Every event of ``follower`` until its stream has ended."""
    events: list[StreamEvent] = []
    while not follower.finished:
        event = await follower.next(wait=1.0)
        if event is not None:
            events.append(event)
    return events


def outcome(events: list[StreamEvent], total: int) -> str:
    """Events ``{"i": 1..total}`` then ``complete``, each once and in order (``"continued"``),
    or an in-band reset after which the rest comes in order (``"reset"``)."""
    assert events, "nothing received"
    assert events[-1].type == "complete"
    resets = [i for i, e in enumerate(events) if e.type == "reset"]
    tail = events[resets[-1] + 1 :] if resets else events
    numbers = [int(str(e.data["i"])) for e in tail[:-1] if isinstance(e.data, dict)]
    if not resets:
        assert numbers == list(range(1, total + 1))
        return "continued"
    if numbers:
        assert numbers == list(range(numbers[0], total + 1))
    return "reset"
