"""An endpoint on loopback that answers like a served model, as slowly as a test asks.

Every POST/PUT gets `body` (a JSON array, by default none found) after `delay_s`;
every GET gets 200 (a health check). With `tls` (cert PEM, key PEM) it speaks HTTPS.
The delay is the subject of the tests that use it (an endpoint slower than the app's
deadline), not a wait for something else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.loopback import reply, serve_http, server_tls


def _handler(body: bytes, delay_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(delay_s)
            self._answer(body)

        do_PUT = do_POST

        def do_GET(self) -> None:
            self._answer(b'{"status": "Healthy"}')

        def _answer(self, data: bytes) -> None:
            reply(self, 200, "application/json", data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
            pass

    return Handler


@contextmanager
def endpoint(
    body: bytes = b"[]", delay_s: float = 0.0, tls: tuple[bytes, bytes] | None = None
) -> Iterator[str]:
    """Serve until the block ends; yields the base URL (`http://127.0.0.1:PORT`)."""
    with serve_http(_handler(body, delay_s), tls=server_tls(*tls) if tls else None) as url:
        yield url
