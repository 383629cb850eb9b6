"""A real nginx (the system binary) in front of one upstream, started on a free port.

``location /`` carries the settings docs/deploying.md recommends; ``location /default/``
proxies with nginx's defaults (response buffering on, which the ``X-Accel-Buffering: no`` the
library sends turns off for its streams).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Self

import pytest

from tests.helpers.redis_server import LOCALHOST, free_port, port_accepts

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

RECOMMENDED = """
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_cache off;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
"""


def find_nginx() -> str:
    """The nginx binary, or skip saying it is missing."""
    found = shutil.which("nginx") or (os.access("/usr/sbin/nginx", os.X_OK) and "/usr/sbin/nginx")
    if not found:
        pytest.skip("no nginx: scripts/test installs it (apt-get install nginx)")
    return str(found)


class Nginx:
    """``nginx -g 'daemon off;'`` with its own prefix, config and logs in ``directory``."""

    host = LOCALHOST

    def __init__(self, directory: Path, upstream_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.upstream = f"http://{LOCALHOST}:{upstream_port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def config(self) -> str:
        """The nginx.conf it runs."""
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {kind}_temp_path {self.directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""{user}worker_processes 1;
error_log {self.directory / "error.log"} info;
pid {self.directory / "nginx.pid"};
events {{ worker_connections 256; }}
http {{
    access_log {self.directory / "access.log"};
{temp}
    server {{
        listen {self.host}:{self.port};
        location /default/ {{
            proxy_pass {self.upstream}/;
            proxy_http_version 1.1;
        }}
        location / {{
            proxy_pass {self.upstream};{RECOMMENDED}        }}
    }}
}}
"""

    def start(self) -> None:
        """Write the config, start nginx and wait until its port accepts connections."""
        binary = find_nginx()
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        command = [binary, "-p", str(self.directory), "-c", str(conf), "-g", "daemon off;"]
        with (self.directory / "nginx.out").open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_accepts(self.host, self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        """nginx's own output and error log."""
        files = (self.directory / "nginx.out", self.directory / "error.log")
        return "\n".join(p.read_text(errors="replace") for p in files if p.exists())

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL if it lingers."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
            return
        process.kill()
        process.wait(timeout=5)

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
