"""Is it serving? Workers READY, health through the public URL, one real request.

TorchServe's /ping says Healthy before a worker has loaded the model, so
readiness is read from the management API (every worker READY). Then the
health path and a smoke image go through the public URL, the way the phone
reaches it: nginx, TLS, the secret and the prediction path are all checked,
and TLS is pinned to the certificate this deploy installed (no "accept any"), or,
when it comes from an ACME CA (renewed on the host, so no pin would last), its
chain is verified for the address (steps/acme.py: ServedCertificate).
"""

from __future__ import annotations

import json
import time

import httpx

from bootstrap.steps.acme import ServedCertificate
from bootstrap.steps.base import LOG_DIR, UNIT_NAME, DeployError, Run
from bootstrap.steps.secret import Secret
from bootstrap.steps.step import Done, Step
from bootstrap.steps.torchserve import TorchServe, management
from serving.contract import SmokeError, smoke
from serving.endpoint import base_url, health_url, prediction_url
from serving.polling import Retrying, poll, retry

# TorchServe's describe API calls a worker that has not loaded its model yet "UNLOADING".
_WORKER_WORDS = {"READY": "ready", "UNLOADING": "loading"}


def public_base(run: Run) -> str:
    return base_url(run.public_address, run.options.public_port)


def model_url(run: Run, secret: Secret, name: str) -> str:
    return prediction_url(public_base(run), name, secret.value)


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


def wait_ready(run: Run, models: tuple[str, ...], deadline: float) -> None:
    """Every model's workers READY; progress only when what they report changes."""
    for model in models:
        said = ""

        def check(name: str = model) -> tuple[bool, str]:
            nonlocal said
            status, body = management(run, "GET", f"/models/{name}", timeout_s=10)
            ready, summary = workers_ready(body) if status == 200 else (False, "TorchServe is starting")
            if not ready and summary != said:
                run.progress.status(f"waiting for model {name} to load ({summary})")
                said = summary
            return ready, summary

        loaded, (_, summary) = poll(
            check, lambda answer: answer[0], timeout_s=deadline - time.monotonic(), every_s=2.0
        )
        if not loaded:
            raise DeployError(
                f"model {model} is not ready ({summary}). Logs: journalctl -u "
                f"{UNIT_NAME} and {LOG_DIR}/model_log.log on the host"
            )


class NotHealthy(Exception):
    """The public health check did not answer 200 (yet)."""


def wait_public_health(run: Run, secret: Secret, cert: ServedCertificate, deadline: float) -> None:
    url = health_url(public_base(run), secret.value)

    def report(attempt: Retrying) -> None:
        run.progress.status(f"waiting for the public health check ({attempt.error})")

    with httpx.Client(verify=cert.client_context(), timeout=10.0) as client:

        def check() -> None:
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                raise NotHealthy(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                raise NotHealthy(f"HTTP {response.status_code}")

        try:
            retry(check, timeout_s=deadline - time.monotonic(), every_s=1.0, when=NotHealthy, on_retry=report)
        except NotHealthy as exc:
            raise DeployError(
                f"the endpoint is not reachable from here through {public_base(run)}/ ({exc}). "
                "Check that a firewall/security group allows the public port, and nginx "
                "(journalctl -u nginx; status codes in /var/log/nginx/synthdet.access.log)."
            ) from None


def apply(run: Run, torchserve: TorchServe, secret: Secret, cert: ServedCertificate) -> Done[None]:
    deadline = time.monotonic() + run.options.health_timeout_s
    wait_ready(run, torchserve.models, deadline)
    wait_public_health(run, secret, cert, deadline)
    if not run.options.smoke:
        return Done(None, "serving (smoke test skipped)", None)
    results = []
    for name in torchserve.models:
        run.progress.status(f"smoke test: one image to {name} through the public URL")
        try:
            result = smoke(
                model_url(run, secret, name),
                timeout_s=run.options.smoke_timeout_s,
                verify=cert.client_context(),
            )
        except SmokeError as exc:
            raise DeployError(f"smoke test of {name} failed: {exc}. Logs: journalctl -u {UNIT_NAME}") from exc
        late = "" if result.in_time else " (later than the app's deadline: a phone would drop it)"
        results.append(f"{name} {result.latency_ms:.0f} ms, {len(result.detections)} boxes{late}")
    return Done(None, "serving: " + "; ".join(results), None)


# It only looks: it leaves nothing on the host.
STEP = Step("health", apply)
