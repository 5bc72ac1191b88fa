"""Request errors the handler turns into a 4xx answer with a JSON message.

One bad request in a batch must not fail its neighbours, so errors are values
carried per request, not exceptions that abort the whole batch.
"""

from __future__ import annotations

import json


class RequestError(Exception):
    """A request the handler refuses; `status` is the HTTP code the client gets."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)

    def to_json(self) -> str:
        return json.dumps({"code": self.status, "error": self.message})


class EmptyBody(RequestError):
    status = 400


class NotAnImage(RequestError):
    status = 415


class CorruptImage(RequestError):
    status = 400


class ImageTooLarge(RequestError):
    status = 413


class InferenceFailed(RequestError):
    """Not the client's fault; still answered per request with a JSON body."""

    status = 500
