"""A real ``redis-server`` process on a private TCP port, for tests."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_redis_server() -> str | None:
    """Return the path of the ``redis-server`` binary on PATH, or None."""
    return shutil.which("redis-server")


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process bound to ``127.0.0.1`` on a fixed port.

    Persistence is off unless ``persistent`` (an append-only file, fsynced on every write);
    the working directory is ``directory``. ``start`` after ``stop`` or ``kill`` brings the
    server back on the same port, empty (persistent: with its data, as after an outage).
    """

    host = LOCALHOST

    def __init__(
        self,
        binary: str,
        directory: Path,
        *,
        port: int | None = None,
        startup_timeout: float = 10.0,
        persistent: bool = False,
    ) -> None:
        self.binary = binary
        self.persistent = persistent
        self.directory = directory
        self.port = free_port() if port is None else port
        self.startup_timeout = startup_timeout
        self.log_path = directory / f"redis-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        if self._process is None or not self.is_running():
            raise RuntimeError("redis-server is not running")
        return self._process.pid

    def is_running(self) -> bool:
        """Return whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def ping(self) -> bool:
        """Return whether the server answers PING right now."""
        return _ping(self.host, self.port)

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self.is_running():
            raise RuntimeError(f"redis-server already running on port {self.port}")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready(self._process)

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM and wait for the process to exit."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """Send SIGKILL and wait for the process to exit."""
        self._signal(signal.SIGKILL, timeout)

    def restart(self) -> None:
        """Stop the server (if running) and start it again on the same port."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Everything the server wrote to its log so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

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

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--appendfilename", f"appendonly-{self.port}.aof",
            "--appenddirname", f"aof-{self.port}",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
            if process.returncode is not None:
                self._process = None
                raise RuntimeError(
                    f"redis-server exited with {process.returncode} on port {self.port}:\n"
                    + self.log_text()
                )
        self.kill()
        raise RuntimeError(
            f"redis-server did not answer PING within {self.startup_timeout}s:\n" + self.log_text()
        )

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        self._process = None
