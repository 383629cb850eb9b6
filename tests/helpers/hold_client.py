"""A client that opens one stream and keeps reading it: ``python -m tests.helpers.hold_client
HOST PORT PATH``. Prints its local port once the first bytes arrived, then reads until killed
(so its kernel acknowledges the server's data until its packets are dropped)."""

from __future__ import annotations

import socket
import sys


def main() -> None:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=10)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    sock.sendall(request.encode())
    first = sock.recv(65536)
    if not first.startswith(b"HTTP/1.1 200"):
        print(f"refused: {first[:80]!r}", flush=True)
        sys.exit(1)
    print(sock.getsockname()[1], flush=True)
    sock.settimeout(None)
    while sock.recv(65536):
        pass


if __name__ == "__main__":
    main()
