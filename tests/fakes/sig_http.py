"""A local HTTP server on 127.0.0.1 (ephemeral port) serving mutable bodies, for scrape tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Pages:
    def __init__(self) -> None:
        self.bodies: dict[str, tuple[int, bytes]] = {}
        self.delay_s = 0.0
        self.hits = 0
        self.base = ""

    def set(self, path: str, body: str, status: int = 200) -> str:
        self.bodies[path] = (status, body.encode())
        return self.base + path


@contextmanager
def serve() -> Iterator[Pages]:
    pages = Pages()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            import time

            pages.hits += 1
            if pages.delay_s:
                time.sleep(pages.delay_s)
            status, body = pages.bodies.get(self.path, (404, b"not found\n"))
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    pages.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield pages
    finally:
        srv.shutdown()
        srv.server_close()
