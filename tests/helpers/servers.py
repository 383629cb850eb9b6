"""Every common ASGI server as a real child process serving one app: uvicorn, Hypercorn over
HTTP/1.1 and HTTP/2 cleartext (prior knowledge), Granian, gunicorn with uvicorn workers."""

from __future__ import annotations

import sys
from typing import Literal, TypeAlias

from tests.helpers.uvicorn_server import UvicornProcess

ServerKind: TypeAlias = Literal["uvicorn", "hypercorn-h1", "hypercorn-h2c", "granian", "gunicorn"]
SERVER_KINDS: tuple[ServerKind, ...] = (
    "uvicorn",
    "hypercorn-h1",
    "hypercorn-h2c",
    "granian",
    "gunicorn",
)


class ServerProcess(UvicornProcess):
    """``UvicornProcess`` with the command line of another server (one worker each)."""

    def __init__(self, kind: ServerKind, app_import_path: str, **kwargs: object) -> None:
        super().__init__(app_import_path, **kwargs)  # type: ignore[arg-type]
        self.kind = kind

    @property
    def http2(self) -> bool:
        """Clients must speak HTTP/2 with prior knowledge."""
        return self.kind == "hypercorn-h2c"

    def command(self) -> list[str]:
        python, app, bind = sys.executable, self.app_import_path, f"{self.host}:{self.port}"
        match self.kind:
            case "uvicorn":
                return [python, "-m", "uvicorn", app, "--host", self.host,
                        "--port", str(self.port), "--lifespan", "on",
                        "--no-access-log"]  # fmt: skip
            case "hypercorn-h1" | "hypercorn-h2c":
                return [python, "-m", "hypercorn", app, "--bind", bind, "--workers", "1"]
            case "granian":
                return [python, "-m", "granian", "--interface", "asgi", "--host", self.host,
                        "--port", str(self.port), "--workers", "1", app]  # fmt: skip
            case "gunicorn":
                return [python, "-m", "gunicorn", app, "--bind", bind, "--workers", "1",
                        "--worker-class", "uvicorn_worker.UvicornWorker"]  # fmt: skip
