"""Deploy and undeploy over SSH: the library the CLI and the Pulumi provider call.

`deploy` connects (waiting for a booting host), reads the host's facts, runs
every step in order (each idempotent, reporting changed/unchanged) and
returns the endpoint URLs, the certificate fingerprint and what changed.
`undeploy` removes what deploy installed.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bootstrap.api import DeployOptions, DeployResult, ModelSpec, Progress, SshTarget
from bootstrap.certs import fingerprint_sha256
from bootstrap.facts import gather_host_facts
from bootstrap.local_runner import LocalRunner
from bootstrap.ssh import Connection
from bootstrap.steps import STEPS, packages, upload_model
from bootstrap.steps.base import (
    ETC_DIR,
    LOG_DIR,
    NGINX_DEFAULT_LINK,
    NGINX_SITE,
    NGINX_SITE_LINK,
    NULL_PROGRESS,
    OPT_DIR,
    SERVICE_USER,
    STATE_FILE,
    UNIT_FILE,
    UNIT_NAME,
    VAR_DIR,
    Context,
    DeployError,
    HostState,
    write_state,
)
from bootstrap.steps.health import model_url
from bootstrap.steps.nginx import NGINX_DROPIN

__all__ = ["DeployError", "deploy", "run_steps", "undeploy"]


def _open(target: SshTarget, options: DeployOptions, progress: Progress) -> Connection:
    progress.status(f"connecting to {target.user}@{target.host}:{target.port}")
    return Connection.open(target, wait_timeout_s=options.ssh_wait_timeout_s, status=progress.status)


def deploy(
    target: SshTarget,
    models: Sequence[ModelSpec],
    options: DeployOptions | None = None,
    progress: Progress | None = None,
) -> DeployResult:
    """Turn the host into an HTTPS endpoint serving `models`; safe to rerun."""
    options = options or DeployOptions()
    progress = progress or NULL_PROGRESS
    models = tuple(models)
    if not models:
        raise ValueError("deploy needs at least one model (--model NAME=PATH)")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    for spec in models:
        if not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {spec.checkpoint} for model {spec.name} not found")

    with tempfile.TemporaryDirectory(prefix="synthdet-deploy-", dir=options.work_dir) as work:
        # Build first: a bad checkpoint fails before minutes of waiting for SSH.
        built = upload_model.build(models, options, Path(work), progress)
        with _open(target, options, progress) as conn:
            return run_steps(conn, models, options, progress, built, options.public_address or target.host)


def run_steps(
    conn: Connection | LocalRunner,
    models: Sequence[ModelSpec],
    options: DeployOptions,
    progress: Progress,
    built: dict[str, tuple[Path, str]],
    public_address: str,
) -> DeployResult:
    """Every step, in order, through `conn`: over SSH (`deploy`) or on this machine at boot
    (`bootstrap.boot_local`, behind a cloud load balancer). `built`: name -> (.mar, sha256)."""
    models = tuple(models)
    progress.status("reading host facts (OS, GPU, driver, Python, torch)")
    facts = gather_host_facts(conn)  # type: ignore[arg-type]
    state = HostState.from_json(conn.read_file(STATE_FILE))
    ctx = Context(
        conn=conn,  # type: ignore[arg-type]
        facts=facts,
        models=models,
        options=options,
        public_address=public_address,
        state=state,
        progress=progress,
        archives={name: mar for name, (mar, _) in built.items()},
        archive_sha256={name: sha for name, (_, sha) in built.items()},
    )
    steps: list[tuple[str, bool]] = []
    for step in STEPS:
        progress.status(f"{step.NAME} ...")
        result = step.apply(ctx)
        steps.append((result.name, result.changed))
        progress.step_done(result.name, result.changed, result.detail)
        if step is not packages:  # /etc/synthdet exists from `layout` on
            # Remember what was done so far: undeploy and reruns read it.
            write_state(ctx)

    endpoints = {spec.name: model_url(ctx, spec.name) for spec in models}
    host = dict(facts.summary())
    host["torch"] = (
        facts.image_torch.torch
        if ctx.torch and ctx.torch.reuse_image and facts.image_torch
        else (ctx.torch.build.flavor if ctx.torch and ctx.torch.build else None)
    )
    host["device"] = ctx.torch.device if ctx.torch else None
    return DeployResult(
        endpoints=endpoints,
        endpoint=endpoints.get("synthdet", endpoints[models[0].name]),
        cert_sha256=fingerprint_sha256(ctx.cert_pem),
        changed=any(changed for _, changed in steps),
        public_address=ctx.public_address,
        steps=steps,
        host=host,
    )


def undeploy_script(state: HostState, *, keep_packages: bool = False) -> str:
    """Shell that removes what deploy installed (idempotent: missing things are fine)."""
    q = shlex.quote
    lines = [
        f"systemctl disable --now {UNIT_NAME} 2>/dev/null || true",
        f"rm -f {UNIT_FILE} {NGINX_DROPIN}",
        "systemctl daemon-reload",
        f"systemctl reset-failed {UNIT_NAME} 2>/dev/null || true",
        f"rm -f {NGINX_SITE_LINK} {NGINX_SITE}",
    ]
    if state.removed_default_site:
        lines.append(
            "[ -e /etc/nginx/sites-available/default ] && "
            f"ln -sfn /etc/nginx/sites-available/default {NGINX_DEFAULT_LINK} || true"
        )
    lines.append(
        "if systemctl is-active --quiet nginx; then nginx -t 2>/dev/null && "
        "systemctl reload nginx || true; fi"
    )
    lines.append(f"rm -rf {OPT_DIR} {VAR_DIR} {LOG_DIR} {ETC_DIR}")
    lines.append("rm -f /var/log/nginx/synthdet.access.log* /var/log/nginx/synthdet.error.log*")
    if state.created_user:
        lines.append(f"id -u {SERVICE_USER} >/dev/null 2>&1 && userdel {SERVICE_USER} || true")
    if state.apt_installed and not keep_packages:
        pkgs = " ".join(q(p) for p in state.apt_installed)
        lines.append(
            "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "
            f"purge -y -q {pkgs} && apt-get autoremove -y -q || true"
        )
    return "\n".join(lines)


def undeploy(
    target: SshTarget,
    options: DeployOptions | None = None,
    progress: Progress | None = None,
    *,
    keep_packages: bool = False,
) -> None:
    """Stop and remove the service, the nginx site, files, the user and packages deploy added."""
    options = options or DeployOptions()
    progress = progress or NULL_PROGRESS
    with _open(target, options, progress) as conn:
        state = HostState.from_json(conn.read_file(STATE_FILE))
        progress.status("removing the service, nginx site, files and packages deploy installed")
        conn.run(undeploy_script(state, keep_packages=keep_packages), timeout_s=1800)
        progress.step_done("undeploy", True, f"removed {UNIT_NAME}, {NGINX_SITE}, {OPT_DIR}")
