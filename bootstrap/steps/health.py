"""Is it serving? Workers READY, health through the public URL, one real request.

TorchServe's /ping says Healthy before a worker has loaded the model, so
readiness is read from the management API (every worker READY). Then the
health path and a smoke image go through the public URL, the way the phone
reaches it: nginx, TLS, the secret and the prediction path are all checked.
"""

from __future__ import annotations

import json
import time

import httpx

from bootstrap.contract import SmokeError, smoke
from bootstrap.steps.base import LOG_DIR, UNIT_NAME, Context, DeployError, StepResult
from bootstrap.steps.torchserve import management

NAME = "health"


def public_base(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address  # IPv6 literal
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def model_url(ctx: Context, name: str) -> str:
    return f"{public_base(ctx.public_address, ctx.options.public_port)}/{ctx.secret}/predictions/{name}"


def health_url(ctx: Context) -> str:
    return f"{public_base(ctx.public_address, ctx.options.public_port)}/{ctx.secret}/ping"


def workers_ready(body: str) -> tuple[bool, str]:
    """From GET /models/<name>: (all workers READY and at least one, summary)."""
    try:
        described = json.loads(body)
    except json.JSONDecodeError:
        return False, "no model description"
    workers = [w for model in described for w in model.get("workers", [])]
    states = [str(w.get("status")) for w in workers]
    return bool(states) and all(s == "READY" for s in states), ",".join(states) or "no workers"


def wait_ready(ctx: Context, deadline: float) -> None:
    for spec in ctx.models:
        last = ""
        while True:
            status, body = management(ctx, "GET", f"/models/{spec.name}", timeout_s=10)
            ready, last = workers_ready(body) if status == 200 else (False, f"HTTP {status}")
            if ready:
                break
            if time.monotonic() > deadline:
                raise DeployError(
                    f"model {spec.name} is not ready (workers: {last}). Logs: journalctl -u "
                    f"{UNIT_NAME} and {LOG_DIR}/model_log.log on the host"
                )
            ctx.progress.status(f"waiting for model {spec.name} to load (workers: {last})")
            time.sleep(2.0)


def wait_public_health(ctx: Context, deadline: float) -> None:
    url = health_url(ctx)
    last = ""
    with httpx.Client(verify=False, timeout=10.0) as client:
        while True:
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise DeployError(
                    f"the endpoint is not reachable from here through "
                    f"https://{ctx.public_address}:{ctx.options.public_port}/ ({last}). Check "
                    "that a firewall/security group allows the public port, and nginx "
                    "(journalctl -u nginx, /var/log/nginx/synthdet.error.log)."
                )
            ctx.progress.status(f"waiting for the public health check ({last})")
            time.sleep(1.0)


def apply(ctx: Context) -> StepResult:
    deadline = time.monotonic() + ctx.options.health_timeout_s
    wait_ready(ctx, deadline)
    wait_public_health(ctx, deadline)
    if not ctx.options.smoke:
        return StepResult(NAME, False, "ready (smoke test skipped)")
    results = []
    for spec in ctx.models:
        ctx.progress.status(f"smoke test: one image to {spec.name} through the public URL")
        try:
            result = smoke(model_url(ctx, spec.name), timeout_s=ctx.options.smoke_timeout_s)
        except SmokeError as exc:
            raise DeployError(
                f"smoke test of {spec.name} failed: {exc}. Logs: journalctl -u {UNIT_NAME}"
            ) from exc
        results.append(f"{spec.name} {result.latency_ms:.0f} ms, {len(result.detections)} boxes")
    return StepResult(NAME, False, "; ".join(results))
