"""A tiny HTTP(S) server for tests that stand in for an endpoint or a cloud API (stdlib only)."""

from __future__ import annotations

import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def serve_http(
    handler: Callable[..., BaseHTTPRequestHandler],
    *,
    address: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    poll_interval: float = 0.5,
) -> Iterator[str]:
    """Serve `handler` on `address` (a free port) until the block ends; yield the base URL
    (`http://127.0.0.1:PORT`; `https://` with a server-side `tls` context)."""
    server = ThreadingHTTPServer((address, 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def server_tls(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server-side TLS context with this certificate and key (PEM), for `serve_http`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="loopback-tls-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        context.load_cert_chain(cert, key)
    return context


def reply(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    """Answer `request` with `body` (Content-Type and Content-Length set)."""
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


@contextmanager
def loopback_endpoint(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 (a free port) and yield a prediction URL on it."""
    with serve_http(handler) as base:
        yield f"{base}/predictions/synthdet"
