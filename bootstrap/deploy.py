"""Deploy and undeploy: the library the CLI, the Pulumi provider and a replica's boot call.

`deploy` builds the model archives, connects (waiting for a booting host),
checks that the login may use sudo, reads the host's facts, runs every step
in order (each idempotent, reporting changed/unchanged) and returns the
endpoint URLs, the certificate fingerprint and what changed. `undeploy`
removes what deploy installed, as recorded on the host, and nothing else.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Sequence
from types import ModuleType

from bootstrap import files
from bootstrap.api import DeployOptions, DeployResult, Progress, SshTarget
from bootstrap.facts import account_query, gather_host_facts, parse_account_query
from bootstrap.runner import Runner
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
    StepResult,
    write_state,
)
from bootstrap.steps.firewall import FIREWALL_UNIT_FILE, FIREWALL_UNIT_NAME, TABLE
from bootstrap.steps.health import model_url
from bootstrap.steps.layout import FIRST_LOGIN_UID, check_service_account
from bootstrap.steps.nginx import NGINX_DROPIN
from bootstrap.steps.upload_model import Built
from serving.certs import fingerprint_sha256
from serving.models import DEFAULT_MODEL_NAME, ModelSpec, unique_names

__all__ = ["DeployError", "deploy", "run_steps", "undeploy"]


def _open(target: SshTarget, options: DeployOptions, progress: Progress) -> Connection:
    progress.status(f"connecting to {target.user}@{target.host}:{target.port}")
    return Connection.open(target, wait_timeout_s=options.ssh_wait_timeout_s, status=progress.status)


def check_privileges(conn: Runner) -> None:
    """A non-root login must have passwordless sudo: say so before anything is changed."""
    if conn.is_root:
        return
    res = conn.run("true", check=False, timeout_s=60)
    if res.ok:
        return
    said = (res.stderr or res.stdout).strip()
    if "password is required" in said:
        # sudo -n says the same whether the login is not in sudoers at all or its sudo
        # wants a password: name both.
        why = "it may not use sudo, or its sudo asks for a password, which a deploy cannot type"
    elif "not found" in said:
        why = "sudo is not installed"
    else:
        why = "it may not use sudo"
    raise DeployError(
        f"{conn.where}: {why} ({said or f'exit {res.rc}'}). Log in as root, or give the login "
        "passwordless sudo (e.g. `USER ALL=(ALL) NOPASSWD:ALL` in /etc/sudoers.d/USER, as cloud "
        "images do for their default user). Nothing was changed on the host."
    )


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
    unique_names(models)
    for spec in models:
        if not spec.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {spec.checkpoint} for model {spec.name} not found")
    # Build first: a bad checkpoint fails before minutes of waiting for SSH.
    built = upload_model.build(models, options, progress)
    with _open(target, options, progress) as conn:
        return run_steps(conn, models, options, progress, built, options.public_address or target.host)


def run_steps(
    conn: Runner,
    models: Sequence[ModelSpec],
    options: DeployOptions,
    progress: Progress,
    built: Built,
    public_address: str,
) -> DeployResult:
    """Every step, in order, through `conn`: over SSH (`deploy`) or on this machine at boot
    (`bootstrap.boot_local`, behind a cloud load balancer)."""
    models = tuple(models)
    # Refusals first: a login that cannot sudo, an account that is somebody's. Nothing
    # has been changed on the host when these fail.
    check_privileges(conn)
    check_service_account(parse_account_query(conn.run(account_query(SERVICE_USER)).stdout))
    progress.status("reading host facts (OS, GPU, driver, Python, torch)")
    facts = gather_host_facts(conn)
    state = HostState.from_json(files.read_file(conn, STATE_FILE))
    ctx = Context(
        conn=conn,
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
        result = apply_and_record(step, ctx)
        steps.append((result.name, result.changed))
        progress.step_done(result.name, result.changed, result.detail)

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
        endpoint=endpoints.get(DEFAULT_MODEL_NAME, endpoints[models[0].name]),
        cert_sha256=fingerprint_sha256(ctx.cert_pem),
        changed=any(changed for _, changed in steps),
        public_address=ctx.public_address,
        steps=steps,
        host=host,
    )


def apply_and_record(step: ModuleType, ctx: Context) -> StepResult:
    """Run one step (a module of bootstrap.steps), then write down what was done so far
    (undeploy and reruns read it).

    A step that fails half way is recorded too (an account or packages it added before
    failing), on a best-effort basis: its own error is the one the user must see.
    """
    try:
        result = step.apply(ctx)
    except BaseException:
        if step is not packages:
            with contextlib.suppress(Exception):
                write_state(ctx)
        raise
    if step is not packages:  # /etc/synthdet exists from `layout` on
        write_state(ctx)
    return result


def remove_account_script(name: str) -> str:
    """userdel `name` only while it is still a system account (never a person's login)."""
    q = shlex.quote(name)
    return (
        f"entry=$(getent passwd {q} || true); "
        'if [ -n "$entry" ]; then '
        'uid=$(echo "$entry" | cut -d: -f3); shell=$(echo "$entry" | cut -d: -f7); '
        f'if [ "$uid" -gt 0 ] && [ "$uid" -lt {FIRST_LOGIN_UID} ] && '
        'case "$shell" in */nologin|*/false) true ;; *) false ;; esac; '
        f'then userdel {q}; else echo "kept {name}: not a system account" >&2; fi; fi'
    )


def undeploy_script(state: HostState, *, keep_packages: bool = False) -> str:
    """Shell that removes what deploy installed (idempotent: missing things are fine)."""
    q = shlex.quote
    lines = [
        f"systemctl disable --now {UNIT_NAME} 2>/dev/null || true",
        f"systemctl disable --now {FIREWALL_UNIT_NAME} 2>/dev/null || true",
        f"nft delete table inet {TABLE} 2>/dev/null || true",
        f"rm -f {UNIT_FILE} {FIREWALL_UNIT_FILE} {NGINX_DROPIN}",
        "systemctl daemon-reload",
        f"systemctl reset-failed {UNIT_NAME} {FIREWALL_UNIT_NAME} 2>/dev/null || true",
        f"rm -f {NGINX_SITE_LINK} {NGINX_SITE}",
    ]
    if state.removed_default_site:
        lines.append(
            "[ -e /etc/nginx/sites-available/default ] && "
            f"ln -sfn /etc/nginx/sites-available/default {NGINX_DEFAULT_LINK} || true"
        )
    lines.append(
        "if systemctl is-active --quiet nginx; then "
        "nginx -t 2>/dev/null && systemctl reload nginx || true; fi"
    )
    lines.append(f"rm -rf {OPT_DIR} {VAR_DIR} {LOG_DIR} {ETC_DIR}")
    lines.append("rm -f /var/log/nginx/synthdet.access.log* /var/log/nginx/synthdet.error.log*")
    lines += [remove_account_script(name) for name in state.created_users]
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
    """Stop and remove the service, the nginx site, files, accounts and packages deploy added."""
    options = options or DeployOptions()
    progress = progress or NULL_PROGRESS
    with _open(target, options, progress) as conn:
        check_privileges(conn)
        state = HostState.from_json(files.read_file(conn, STATE_FILE))
        progress.status("removing the service, nginx site, files and packages deploy installed")
        conn.run(undeploy_script(state, keep_packages=keep_packages), timeout_s=1800)
        progress.step_done("undeploy", True, f"removed {UNIT_NAME}, {NGINX_SITE}, {OPT_DIR}")
