"""Is it serving? Workers READY, health through the public URL, one real request.

TorchServe's /ping says Healthy before a worker has loaded the model, so
readiness is read from the management API (every worker READY). Then the
health path and a smoke image go through the public URL, the way the phone
reaches it: nginx, TLS, the secret and the prediction path are all checked,
and TLS is pinned to the certificate this deploy installed (no "accept any").
"""

from __future__ import annotations

import json
import time

import httpx
import tenacity

from bootstrap.steps.base import LOG_DIR, UNIT_NAME, Context, DeployError, StepResult, poll
from bootstrap.steps.torchserve import management
from serving.certs import pinned_context
from serving.contract import SmokeError, smoke
from serving.endpoint import base_url, health_url, prediction_url

NAME = "health"
# TorchServe's describe API calls a worker that has not loaded its model yet "UNLOADING".
_WORKER_WORDS = {"READY": "ready", "UNLOADING": "loading"}


def public_base(ctx: Context) -> str:
    return base_url(ctx.public_address, ctx.options.public_port)


def model_url(ctx: Context, name: str) -> str:
    return prediction_url(public_base(ctx), name, ctx.secret)


def workers_ready(body: str) -> tuple[bool, str]:
    """From GET /models/<name>: (all workers READY and at least one, a summary for people)."""
    try:
        described = json.loads(body)
    except json.JSONDecodeError:
        return False, "no model description yet"
    workers = [w for model in described for w in model.get("workers", [])]
    states = [_WORKER_WORDS.get(str(w.get("status")), str(w.get("status")).lower()) for w in workers]
    if not states:
        return False, "no workers yet"
    counts = {state: states.count(state) for state in dict.fromkeys(states)}
    summary = ", ".join(f"{n} worker{'s' if n > 1 else ''} {state}" for state, n in counts.items())
    return all(state == "ready" for state in states), summary


def wait_ready(ctx: Context, deadline: float) -> None:
    """Every model's workers READY; progress only when what they report changes."""
    for spec in ctx.models:
        said = ""

        def check(name: str = spec.name) -> tuple[bool, str]:
            nonlocal said
            status, body = management(ctx, "GET", f"/models/{name}", timeout_s=10)
            ready, summary = workers_ready(body) if status == 200 else (False, "TorchServe is starting")
            if not ready and summary != said:
                ctx.progress.status(f"waiting for model {name} to load ({summary})")
                said = summary
            return ready, summary

        loaded, (_, summary) = poll(
            check, lambda answer: answer[0], timeout_s=deadline - time.monotonic(), every_s=2.0
        )
        if not loaded:
            raise DeployError(
                f"model {spec.name} is not ready ({summary}). Logs: journalctl -u "
                f"{UNIT_NAME} and {LOG_DIR}/model_log.log on the host"
            )


class NotHealthy(Exception):
    """The public health check did not answer 200 (yet)."""


def wait_public_health(ctx: Context, deadline: float) -> None:
    url = health_url(public_base(ctx), ctx.secret)

    def check(client: httpx.Client) -> None:
        try:
            response = client.get(url)
        except httpx.HTTPError as exc:
            raise NotHealthy(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise NotHealthy(f"HTTP {response.status_code}")

    def report(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        ctx.progress.status(f"waiting for the public health check ({error})")

    with httpx.Client(verify=pinned_context(ctx.cert_pem), timeout=10.0) as client:
        try:
            tenacity.Retrying(
                stop=tenacity.stop_after_delay(max(0.0, deadline - time.monotonic())),
                wait=tenacity.wait_fixed(1.0),
                retry=tenacity.retry_if_exception_type(NotHealthy),
                before_sleep=report,
                reraise=True,
            )(check, client)
        except NotHealthy as exc:
            raise DeployError(
                f"the endpoint is not reachable from here through {public_base(ctx)}/ ({exc}). "
                "Check that a firewall/security group allows the public port, and nginx "
                "(journalctl -u nginx, /var/log/nginx/synthdet.error.log)."
            ) from None


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
            result = smoke(
                model_url(ctx, spec.name),
                timeout_s=ctx.options.smoke_timeout_s,
                verify=pinned_context(ctx.cert_pem),
            )
        except SmokeError as exc:
            raise DeployError(
                f"smoke test of {spec.name} failed: {exc}. Logs: journalctl -u {UNIT_NAME}"
            ) from exc
        results.append(f"{spec.name} {result.latency_ms:.0f} ms, {len(result.detections)} boxes")
    return StepResult(NAME, False, "; ".join(results))
