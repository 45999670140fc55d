"""A file server for delivery "http": answers ``Range: bytes=a-b`` with 206 over kept-alive
HTTP/1.1 connections, and can be told to corrupt bytes or to refuse every request."""

from __future__ import annotations

import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up (the agent dropping a connection, as some tests make it) is no
        error; anything else is printed as socketserver does."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files  # URL path without the leading '/' → content; others are 404
        self.corrupt: dict[str, set[int]] = {}  # path → byte offsets sent with a bit flipped
        self.refuse = False  # every request answered 503
        self.ranges: list[tuple[str, int, int]] = []  # (path, first byte, last byte) served
        self.connections = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)

    def served(self, path: str) -> list[tuple[int, int]]:
        with self._lock:
            return [(a, b) for p, a, b in self.ranges if p == path]

    def record(self, path: str, first: int, last: int) -> None:
        with self._lock:
            self.ranges.append((path, first, last))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: RangeServer

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:
        path = self.path.lstrip("/")
        content = self.server.files.get(path)
        if self.server.refuse or content is None:
            self._empty(503 if self.server.refuse else 404)
            return
        match = RANGE.match(self.headers.get("Range", ""))
        first, last = (int(match[1]), int(match[2])) if match else (0, len(content) - 1)
        if first > last or last >= len(content):
            self._empty(416)
            return
        body = bytearray(content[first : last + 1])
        for offset in self.server.corrupt.get(path, ()):
            if first <= offset <= last:
                body[offset - first] ^= 0x01
        self.server.record(path, first, last)
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(content)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass
