"""The endpoint's URLs, built in one place: what the QR holds, what nginx routes, what logs hide.

A deployed endpoint puts a secret path segment first (the app cannot send
headers, so the URL is the credential): `https://HOST[:PORT]/SECRET/predictions/NAME`.
`synthdet serve` has no secret: `http://HOST:PORT/predictions/NAME`.
"""

from __future__ import annotations

import httpx

# A replica's health path for its load balancer: no secret in it, so none in the
# balancer's configuration (nginx answers it to the balancer's addresses only).
LB_HEALTH_PATH = "/synthdet-health"


def base_url(address: str, port: int, scheme: str = "https") -> str:
    """`https://203.0.113.7`, `https://[2001:db8::1]:8443`: default ports are left out."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    default = {"https": 443, "http": 80}[scheme]
    return f"{scheme}://{host}" if port == default else f"{scheme}://{host}:{port}"


def _prefix(secret: str | None) -> str:
    return f"/{secret}" if secret else ""


def prediction_path(model: str, secret: str | None = None) -> str:
    return f"{_prefix(secret)}/predictions/{model}"


def health_path(secret: str | None = None) -> str:
    return f"{_prefix(secret)}/ping"


def idle_status_path(secret: str) -> str:
    """A deployed host's idle-stop status (JSON; bootstrap/steps/idle_stop.py): not activity."""
    return f"{_prefix(secret)}/idle-stop"


def prediction_url(base: str, model: str, secret: str | None = None) -> str:
    return base.rstrip("/") + prediction_path(model, secret)


def health_url(base: str, secret: str | None = None) -> str:
    return base.rstrip("/") + health_path(secret)


def idle_status_url(base: str, secret: str) -> str:
    return base.rstrip("/") + idle_status_path(secret)


def redact(url: str) -> str:
    """The URL with its secret segment (the one before `predictions` or `ping`) and query hidden."""
    parsed = httpx.URL(url)
    segments = parsed.path.split("/")
    # ["", SECRET, "predictions", NAME], ["", SECRET, "ping"] or ["", SECRET, "idle-stop"]
    if len(segments) >= 3 and segments[1] and segments[2] in ("predictions", "ping", "idle-stop"):
        segments[1] = "***"
    return str(parsed.copy_with(path="/".join(segments), query=None))
