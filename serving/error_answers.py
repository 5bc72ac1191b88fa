"""The answers clients get when the front door refuses a request: one table for both doors.

A deployed host's nginx answers these itself, from named locations rendered
here (bootstrap/steps/nginx.py fills them into its site template), and
`synthdet serve`'s front (synthdet/front.py) answers from the same rows, so
the same bad request gets the same bytes from both: status, JSON body,
Content-Type and Retry-After. The handler's own 4xx (a corrupt image, too
many pixels ...) are not here: they come from TorchServe, through either door.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Seconds a refused client is told to wait (429 and 503 carry it as Retry-After).
RETRY_AFTER_S = 1
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class ErrorAnswer:
    """One refusal. `message` may name {max_body} (the body limit in bytes) and {retry_after}."""

    status: int
    message: str
    retry: bool = False  # says when to retry: Retry-After, and the app drops the frame anyway

    def text(self, max_body: int) -> str:
        return self.message.format(max_body=max_body, retry_after=RETRY_AFTER_S)

    def body(self, max_body: int) -> bytes:
        """`{"code": N, "error": "..."}` and a newline, key order and spacing fixed."""
        return (json.dumps({"code": self.status, "error": self.text(max_body)}) + "\n").encode()

    def headers(self) -> dict[str, str]:
        """Headers of the answer besides the ones every answer carries."""
        retry = {"Retry-After": str(RETRY_AFTER_S)} if self.retry else {}
        return {"Content-Type": CONTENT_TYPE, **retry}


TOO_MANY_REQUESTS = ErrorAnswer(
    429, "too many requests from this address; retry in {retry_after} s", retry=True
)
BUSY = ErrorAnswer(503, "the server is busy or restarting; retry in {retry_after} s", retry=True)
NOT_FOUND = ErrorAnswer(404, "not found")
METHOD_NOT_ALLOWED = ErrorAnswer(405, "method not allowed")
HEADERS_TOO_LARGE = ErrorAnswer(400, "request headers too large")
BODY_TOO_LARGE = ErrorAnswer(413, "request body too large (the limit is {max_body} bytes)")

# One row per status: nginx names each location after its status (@synthdet_<status>).
ERROR_ANSWERS = (TOO_MANY_REQUESTS, BUSY, NOT_FOUND, METHOD_NOT_ALLOWED, HEADERS_TOO_LARGE, BODY_TOO_LARGE)


def nginx_error_locations(max_body: int) -> str:
    """The named locations (`@synthdet_<status>`) nginx's error_page lines send refusals to."""
    blocks = [
        f"    location @synthdet_{answer.status} {{\n"
        f"        default_type {CONTENT_TYPE};\n"
        f"        return {answer.status} {_nginx_string(answer.body(max_body))};\n"
        "    }\n"
        for answer in ERROR_ANSWERS
    ]
    return "".join(blocks)


def nginx_retry_after_map() -> str:
    """The `map $status $synthdet_retry_after` entries: Retry-After on the refusals that say when."""
    return "".join(f"    {answer.status}     {RETRY_AFTER_S};\n" for answer in ERROR_ANSWERS if answer.retry)


def _nginx_string(body: bytes) -> str:
    """A single-quoted nginx string whose value is exactly `body` (a `$` would be a variable)."""
    text = body.decode()
    if "$" in text:
        raise ValueError(f"an nginx return text cannot hold '$': {text!r}")
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"
