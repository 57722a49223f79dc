"""A real HTTP server on 127.0.0.1 for the download tests: it serves a folder from a thread, and
misbehaves on purpose under a few path prefixes, as real servers and networks do.

- `/flaky/<file>`: the first request for each file is cut off half-way (Content-Length says
  the whole size), later ones are whole;
- `/cut-no-length/<file>`: half the file, without a Content-Length, then the connection closes;
- `/html/<file>`: a login page (`text/html`); `/html-octet/<file>`: the same page sent as
  `application/octet-stream`;
- `/trickle/<file>`: the headers at once, then one byte every `trickle_seconds`;
- `/unavailable/<file>`: 503 Service Unavailable, every time.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator

LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    b"<body><form action='/login'><input name='user'></form></body></html>\n"
)


class BucketHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's folder, with the misbehaviours of the module's docstring."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - the http.server API
        prefix, _, rest = self.path.lstrip("/").partition("/")
        behaviours = {
            "flaky": self._flaky,
            "cut-no-length": self._cut_without_length,
            "html": functools.partial(self._page, "text/html; charset=utf-8"),
            "html-octet": functools.partial(self._page, "application/octet-stream"),
            "trickle": self._trickle,
            "unavailable": self._unavailable,
        }
        if prefix not in behaviours:
            return super().do_GET()
        self.path = "/" + rest
        behaviours[prefix]()

    def _body(self) -> bytes:
        with open(self.translate_path(self.path), "rb") as stream:
            return stream.read()

    def _flaky(self):
        if self.path in self.server.cut_once:
            return super().do_GET()
        self.server.cut_once.add(self.path)
        body = self._body()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _cut_without_length(self):
        body = self._body()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _page(self, content_type: str):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(LOGIN_PAGE)))
        self.end_headers()
        self.wfile.write(LOGIN_PAGE)

    def _trickle(self):
        body = self._body()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for index in range(len(body)):
            if self.server.stopping.wait(self.server.trickle_seconds):
                break
            try:
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
            except OSError:  # the client gave up
                break
        self.close_connection = True

    def _unavailable(self):
        self.send_error(503, "Service Unavailable")


@contextlib.contextmanager
def serve(folder: str, trickle_seconds: float = 0.2) -> Iterator[str]:
    """Serves `folder` on 127.0.0.1 (a free port) while the block runs; yields its base URL.

    Example:
        >>> with serve(tmp_path) as url:
        ...     download(f"{url}/r14.npz")
    """
    handler = functools.partial(BucketHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.cut_once, server.trickle_seconds = set(), trickle_seconds
    server.stopping = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
