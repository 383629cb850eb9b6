"""A real uvicorn server, in a background thread or in a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Self

import uvicorn

from tests.helpers.redis_server import LOCALHOST, free_port, port_accepts

if TYPE_CHECKING:
    from types import TracebackType

    from starlette.types import ASGIApp

REPO_ROOT = Path(__file__).resolve().parents[2]


class _ContextManager:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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


class UvicornThread(_ContextManager):
    """``uvicorn.Server`` serving ``app`` on ``127.0.0.1`` from a background thread.

    With ``port=None`` the kernel picks the port; ``port`` and ``base_url`` are
    known once ``start()`` returns.
    """

    host = LOCALHOST

    def __init__(
        self,
        app: ASGIApp,
        port: int | None = None,
        *,
        lifespan: Literal["on", "off", "auto"] = "on",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        graceful_timeout: int = 2,
    ) -> None:
        self.config = uvicorn.Config(
            app,
            host=self.host,
            port=port or 0,
            lifespan=lifespan,
            ws="none",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=graceful_timeout,
        )
        self.server = uvicorn.Server(self.config)
        self.port = port or 0
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def is_running(self) -> bool:
        """The server thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and wait until uvicorn is listening."""
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn thread exited during startup") from self.error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start within {self.startup_timeout}s")
            self._thread.join(timeout=0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Ask uvicorn to exit and join the thread (forcing exit if it lingers)."""
        if not self._thread.is_alive():
            return
        self.server.should_exit = True
        self._thread.join(timeout=self.shutdown_timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(timeout=self.shutdown_timeout)
        if self._thread.is_alive():
            raise RuntimeError("uvicorn thread did not stop")

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:
            self.error = exc


class UvicornProcess(_ContextManager):
    """``python -m uvicorn <app_import_path>`` in a child process on a free port (or
    ``python -m hypercorn`` with ``server="hypercorn"``, or gunicorn with uvicorn workers with
    ``server="gunicorn"``).

    stdout and stderr go to ``log_path``; ``log_text()`` returns them.
    """

    host = LOCALHOST

    def __init__(
        self,
        app_import_path: str,
        env: dict[str, str] | None = None,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        cwd: Path = REPO_ROOT,
        startup_timeout: float = 20.0,
        workers: int = 1,
        server: ServerKind = "uvicorn",
        args: tuple[str, ...] = (),
    ) -> None:
        self.app_import_path = app_import_path
        self.workers = workers
        self.server = server
        self.args = args
        self.env = env or {}
        self.port = port or free_port()
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.log_path = log_path or _temp_log_path()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the uvicorn process."""
        if self._process is None:
            raise RuntimeError("uvicorn process not started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process ended (negative: killed by that signal)."""
        return None if self._process is None else self._process.poll()

    def is_running(self) -> bool:
        """The process is alive."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The command line the process runs."""
        if self.server == "hypercorn":  # ``--workers 0``: serve in this process, no supervisor
            return [
                sys.executable, "-m", "hypercorn", self.app_import_path,
                "--bind", f"{self.host}:{self.port}", "--workers", str(self.workers), *self.args,
            ]  # fmt: skip
        if self.server == "gunicorn":
            return [
                sys.executable, "-m", "gunicorn", self.app_import_path,
                "--worker-class", "uvicorn_worker.UvicornWorker", "--no-control-socket",
                "--bind", f"{self.host}:{self.port}", "--workers", str(self.workers), *self.args,
            ]  # fmt: skip
        return [
            sys.executable, "-m", "uvicorn", self.app_import_path,
            "--port", str(self.port), "--host", self.host, "--lifespan", "on",
            *(["--workers", str(self.workers)] if self.workers > 1 else []), *self.args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the process and wait until its port accepts connections."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(self._process)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (graceful shutdown), wait, and return the exit status."""
        return self._signal(signal.SIGTERM, timeout)

    def process_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process without waiting."""
        if self._process is None:
            raise RuntimeError("uvicorn process not started")
        self._process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit (``subprocess.TimeoutExpired`` past ``timeout``)."""
        if self._process is None:
            raise RuntimeError("uvicorn process not started")
        return self._process.wait(timeout=timeout)

    def children(self) -> list[int]:
        """Process ids of the worker processes (``--workers``, gunicorn): Linux only."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL, wait, and return the exit status."""
        return self._signal(signal.SIGKILL, timeout)

    def stop(self) -> None:
        """Terminate the process if it is still running."""
        if self._process is not None:
            self.terminate()

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not port_accepts(self.host, self.port):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
            if process.returncode is not None:
                raise RuntimeError(
                    f"uvicorn exited with {process.returncode} during startup:\n" + self.log_text()
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"uvicorn did not listen within {self.startup_timeout}s:\n" + self.log_text()
                )

    def _signal(self, sig: signal.Signals, timeout: float) -> int:
        process = self._process
        if process is None:
            raise RuntimeError("uvicorn process not started")
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=timeout)


def _temp_log_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="uvicorn-", suffix=".log")
    os.close(fd)
    return Path(name)


ServerKind = Literal["uvicorn", "hypercorn", "gunicorn"]


class StartUvicornThread(Protocol):
    """What the ``uvicorn_thread`` fixture yields."""

    def __call__(
        self,
        app: ASGIApp,
        port: int | None = None,
        *,
        lifespan: Literal["on", "off", "auto"] = "on",
    ) -> UvicornThread: ...


class StartUvicornProcess(Protocol):
    """What the ``uvicorn_process`` fixture yields."""

    def __call__(
        self,
        app_import_path: str,
        env: dict[str, str] | None = None,
        *,
        workers: int = 1,
        server: ServerKind = "uvicorn",
        args: tuple[str, ...] = (),
    ) -> UvicornProcess: ...
