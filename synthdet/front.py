"""The front door of `synthdet serve`: what nginx is on a deployed host, in-process.

TorchServe listens on loopback only; this small aiohttp server faces the
network (or the laptop) on the address the user chose and gives `synthdet
serve` the deployed endpoint's behaviour:

- the body decides, not the label: any Content-Type (none, a form encoding,
  octet-stream, any image type) reaches the handler as raw bytes, and PUT
  (`curl -T`) is served like POST;
- a GET of a prediction URL is the web viewer page (a phone's browser);
- an oversize body gets 413 with a JSON message, before TorchServe sees it;
- TorchServe's "queue full" 503 becomes a JSON "busy, retry" with Retry-After;
- anything else is a JSON 404 or 405.

It also keeps the time of the last prediction request (a POST or PUT to a
model's path: the app's frames, the viewer's) for `serve --idle-stop-minutes`;
health checks and everything else leave it alone, as on a deployed host.

Its refusals come from serving/error_answers.py, the table nginx's are
rendered from: the same bad request gets the same bytes from both doors.

It runs on an event loop in a thread of its own, so the caller stays
synchronous (and Ctrl-C stays in the main thread).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from serving.error_answers import BODY_TOO_LARGE, BUSY, METHOD_NOT_ALLOWED, NOT_FOUND, ErrorAnswer
from serving.viewer import CONTENT_TYPE as HTML
from serving.viewer import content_security_policy, viewer_page

SHUTDOWN_GRACE_S = 2.0
JSON_TYPE = "application/json"
# Security headers on every answer, as nginx adds them on a deployed host.
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


class _DropMalformedHttp(logging.Filter):
    """Malformed HTTP (an over-long URL or header) gets aiohttp's 400; no traceback on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


logging.getLogger("aiohttp.server").addFilter(_DropMalformedHttp())


class FrontError(RuntimeError):
    pass


def error_response(answer: ErrorAnswer, max_body: int) -> web.Response:
    """One row of the error table, byte for byte as nginx answers it."""
    headers = {**HEADERS, **answer.headers()}
    return web.Response(status=answer.status, body=answer.body(max_body), headers=headers)


def upstream_content_type(header: str | None) -> str:
    """Raw bytes for TorchServe, except a real multipart upload (`curl -F data=@img.jpg`)."""
    if header and header.lower().startswith("multipart/form-data"):
        return header
    return "application/octet-stream"


class Front:
    """Proxy for one TorchServe inference address; `start()` binds, `stop()` closes."""

    def __init__(
        self,
        *,
        upstream: str,
        models: Sequence[str],
        host: str,
        port: int,
        max_body_bytes: int,
        response_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self._clock = clock
        # When the last prediction request came (the start counts as one).
        self.last_prediction = clock()
        self.models = set(models)
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.timeout = ClientTimeout(total=response_timeout_s + 30)
        self.ssl_context = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="synthdet-front", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result(timeout=30)
        except OSError as err:
            self.stop()
            raise FrontError(
                f"cannot listen on {self.host}:{self.port} ({err.strerror or err}); "
                "is another server running? pick another --port"
            ) from err

    async def _start(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors_as_json])
        app.router.add_route("*", "/ping", self._ping)
        app.router.add_route("*", "/predictions/{model}", self._predictions)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._session = ClientSession(timeout=self.timeout)
        # On stop, requests still waiting for a frame get a moment, not aiohttp's default minute.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
        self._loop.close()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def idle_s(self) -> float:
        """Seconds since the last prediction request (or the start)."""
        return self._clock() - self.last_prediction

    # -- requests ---------------------------------------------------------
    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(BODY_TOO_LARGE)
        except web.HTTPException as exc:  # none expected: every route answers for itself
            return self._refuse(ErrorAnswer(exc.status, exc.reason))

    def _refuse(self, answer: ErrorAnswer) -> web.Response:
        return error_response(answer, self.max_body_bytes)

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._refuse(NOT_FOUND)

    async def _ping(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return self._refuse(METHOD_NOT_ALLOWED)
        return await self._forward("GET", "/ping", b"", None)

    async def _predictions(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model not in self.models:  # nginx: a path it has no location for
            return self._refuse(NOT_FOUND)
        if request.method in ("GET", "HEAD"):
            # A browser (a phone that scanned the QR): the live viewer page.
            headers = {**HEADERS, "Content-Security-Policy": content_security_policy()}
            return web.Response(
                body=viewer_page(), content_type=HTML.split(";")[0], charset="utf-8", headers=headers
            )
        if request.method not in ("POST", "PUT"):
            return self._refuse(METHOD_NOT_ALLOWED)
        self.last_prediction = self._clock()
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._refuse(BODY_TOO_LARGE)
        body = await request.read()
        return await self._forward(
            "POST", f"/predictions/{model}", body, upstream_content_type(request.headers.get("Content-Type"))
        )

    async def _forward(self, method: str, path: str, body: bytes, content_type: str | None) -> web.Response:
        assert self._session is not None
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            async with self._session.request(
                method, self.upstream + path, data=body, headers=headers
            ) as answer:
                data = await answer.read()
                status = answer.status
                answer_type = answer.headers.get("Content-Type", JSON_TYPE)
        except (ClientError, asyncio.TimeoutError):
            return self._refuse(BUSY)  # starting or restarting (nginx: 502/504, answered as 503)
        if status == 503:
            # TorchServe's queue is full ("has no worker to serve inference request"): busy, not broken.
            return self._refuse(BUSY)
        return web.Response(status=status, body=data, headers={**HEADERS, "Content-Type": answer_type})
