"""A loopback HTTP server that serves a folder with Range support and counts bytes served."""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.bytes_served = 0
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _target(self) -> Path | None:
                path = (server.root / self.path.split("?")[0].lstrip("/")).resolve()
                return path if path.is_file() and server.root in path.parents else None

            def do_HEAD(self):
                target = self._target()
                with server._lock:
                    server.requests.append(("HEAD", self.path, ""))
                if target is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(target.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                target = self._target()
                rng = self.headers.get("Range", "")
                with server._lock:
                    server.requests.append(("GET", self.path, rng))
                if target is None:
                    self.send_error(404)
                    return
                size = target.stat().st_size
                start, end = 0, size - 1
                if m := _RANGE.fullmatch(rng):
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                n = max(0, end - start + 1)
                self.send_header("Content-Length", str(n))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                with open(target, "rb") as f:
                    f.seek(start)
                    data = f.read(n)
                self.wfile.write(data)
                with server._lock:
                    server.bytes_served += len(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.bytes_served = 0
            self.requests.clear()


def file_sizes(root: Path) -> int:
    return sum(os.path.getsize(p) for p in Path(root).iterdir() if p.is_file())
