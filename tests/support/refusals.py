"""Bad requests a front door refuses itself, and its answers as bytes, to compare the doors.

`synthdet serve`'s front (synthdet/front.py) and a deployed host's nginx must
give the same bad request the same answer: status, body, Content-Type and
Retry-After (both come from serving/error_answers.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from synthdet.front import Front


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str | None
    retry_after: str | None


def answer_of(response: httpx.Response) -> Answer:
    return Answer(
        response.status_code,
        response.content,
        response.headers.get("content-type"),
        response.headers.get("retry-after"),
    )


def ask_refused(client: httpx.Client, prediction_url: str, max_body: int) -> dict[str, Answer]:
    """Each request the front door answers without the model, by name, from a prediction URL
    (`.../predictions/synthdet`, the secret in front of it on a deployed host)."""
    base = prediction_url.removesuffix("/predictions/synthdet")
    requests = {
        "a path that is not there": ("GET", f"{base}/nothing-here", b""),
        "a model that is not there": ("POST", f"{base}/predictions/nope", b"x"),
        "DELETE on the prediction URL": ("DELETE", prediction_url, b""),
        "POST to the health path": ("POST", f"{base}/ping", b"x"),
        "a body over the limit": ("POST", prediction_url, b"\xff" * (max_body + 1)),
    }
    return {
        name: answer_of(client.request(method, url, content=body or None))
        for name, (method, url, body) in requests.items()
    }


def two_free_ports() -> tuple[int, int]:
    """Two different loopback ports nothing listens on (bound together, then released)."""
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return int(first.getsockname()[1]), int(second.getsockname()[1])


@contextmanager
def front_without_torchserve(max_body: int) -> Iterator[str]:
    """`synthdet serve`'s front with no TorchServe behind it (as while it starts or restarts);
    yields its prediction URL for the model `synthdet`."""
    port, nothing = two_free_ports()
    front = Front(
        upstream=f"http://127.0.0.1:{nothing}",
        models=["synthdet"],
        host="127.0.0.1",
        port=port,
        max_body_bytes=max_body,
        response_timeout_s=5,
    )
    front.start()
    try:
        yield f"http://127.0.0.1:{port}/predictions/synthdet"
    finally:
        front.stop()
