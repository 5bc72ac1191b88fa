"""Deploy and undeploy: the library the CLI, the Pulumi provider and a replica's boot call.

`deploy` checks the models, connects (waiting for a booting host), checks
that the login may use sudo, reads the host's facts, chooses the serving
settings left unset for its hardware, builds the model archives for them,
runs every step in the order their needs give (`bootstrap.steps.ORDER`; each
idempotent, reporting changed/unchanged) and returns the endpoint URLs, the
certificate fingerprint and what changed. `undeploy` removes what the steps
declare they leave on the host (their footprints), guided by what the host's
record says deploy did (accounts it created, packages it installed), and
nothing else.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bootstrap import files
from bootstrap.api import DeployOptions, DeployReporter, DeployResult, SshTarget
from bootstrap.facts import account_query, gather_host_facts, parse_account_query
from bootstrap.runner import Runner
from bootstrap.ssh import Connection
from bootstrap.steps import ORDER, upload_model
from bootstrap.steps.acme import ServedCertificate
from bootstrap.steps.base import (
    SERVICE_USER,
    SILENT_REPORTER,
    STATE_FILE,
    Archive,
    DeployError,
    HostState,
    Run,
    settings_for,
    write_state,
)
from bootstrap.steps.health import model_url
from bootstrap.steps.layout import FIRST_LOGIN_UID, check_service_account
from bootstrap.steps.secret import Secret
from bootstrap.steps.step import Done, Footprint, Outputs, Step
from bootstrap.steps.venv import Venv
from serving.certs import fingerprint_sha256
from serving.models import DEFAULT_MODEL_NAME, ModelSpec
from serving.settings import ServingSettings

__all__ = ["DeployError", "deploy", "run_steps", "undeploy"]

# Builds (or finds) every model's archive for the serving settings chosen for the host.
BuildArchives = Callable[[ServingSettings], dict[str, Archive]]


def _open(target: SshTarget, options: DeployOptions, progress: DeployReporter) -> Connection:
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
    progress: DeployReporter | None = None,
) -> DeployResult:
    """Turn the host into an HTTPS endpoint serving `models`; safe to rerun."""
    options = options or DeployOptions()
    progress = progress or SILENT_REPORTER
    models = tuple(models)
    # A bad checkpoint fails here, before minutes of waiting for SSH. The archives are
    # built once the host's facts are known: their model-config.yaml holds the batch
    # settings, which follow the host's hardware (a CPU host gets batch 1).
    upload_model.check_models(models)

    def build(serving: ServingSettings) -> dict[str, Archive]:
        return upload_model.build(models, serving, options.work_dir, progress)

    with _open(target, options, progress) as conn:
        return run_steps(conn, models, options, progress, build, options.public_address or target.host)


@dataclass(frozen=True)
class StepReport:
    name: str
    changed: bool | None  # None: a check (health), which changes nothing
    detail: str


def run_steps(
    conn: Runner,
    models: Sequence[ModelSpec],
    options: DeployOptions,
    progress: DeployReporter,
    build: BuildArchives,
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
    # Whatever the user left unset is chosen for this host's hardware, here, once.
    options = replace(options, serving=settings_for(facts, options.serving))
    run = Run(
        conn=conn,
        facts=facts,
        models=models,
        options=options,
        public_address=public_address,
        archives=build(options.serving),
        progress=progress,
    )
    state = HostState.from_json(files.read_file(conn, STATE_FILE))
    outputs, reports = execute(run, state)
    return result(run, outputs, reports)


def execute(run: Run, state: HostState, steps: Sequence[Step] = ORDER) -> tuple[Outputs, list[StepReport]]:
    """Run `steps` (in the order given) with what each needs; their outputs and reports."""
    outputs = Outputs()
    reports = []
    for step in steps:
        run.progress.status(f"{step.name} ...")
        done = apply_and_record(step, run, state, outputs)
        if done.output is not None:
            outputs.add(done.output)
        reports.append(StepReport(step.name, done.changed, done.detail))
        run.progress.step_done(step.name, done.changed, done.detail)
    return outputs, reports


def result(run: Run, outputs: Outputs, reports: list[StepReport]) -> DeployResult:
    secret, venv, cert = outputs[Secret], outputs[Venv], outputs[ServedCertificate]
    endpoints = {spec.name: model_url(run, secret, spec.name) for spec in run.models}
    facts = run.facts
    host = dict(facts.summary())
    host["torch"] = (
        facts.image_torch.torch
        if venv.torch.reuse_image and facts.image_torch
        else (venv.torch.build.flavor if venv.torch.build else None)
    )
    host["device"] = venv.torch.device
    return DeployResult(
        endpoints=endpoints,
        endpoint=endpoints.get(DEFAULT_MODEL_NAME, endpoints[run.models[0].name]),
        cert_sha256=fingerprint_sha256(cert.cert_pem),
        changed=any(report.changed for report in reports),
        public_address=run.public_address,
        steps=[(report.name, bool(report.changed)) for report in reports],
        host=host,
        certificate={"source": cert.source, "public": "yes" if cert.public else "no", "note": cert.note},
    )


def apply_and_record(step: Step, run: Run, state: HostState, outputs: Outputs) -> Done[object]:
    """Run one step, then write down what was done so far (undeploy and reruns read it),
    when the step records state.

    A step that fails half way is recorded too (an account or packages it added before
    failing), on a best-effort basis: its own error is the one the user must see.
    """
    try:
        done = step.call(run, state, outputs)
    except BaseException:
        if step.records_state:
            with contextlib.suppress(Exception):
                write_state(run, state)
        raise
    if step.records_state:
        write_state(run, state)
    return done


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


def undeploy_script(state: HostState, *, keep_packages: bool = False, steps: Sequence[Step] = ORDER) -> str:
    """Shell that removes what `steps` declare they leave behind (their footprints), later
    steps' first, phase by phase; idempotent: what is missing already is fine."""
    prints: list[Footprint] = [step.footprint for step in reversed(steps)]

    def every(field: str) -> list[str]:
        return list(dict.fromkeys(item for fp in prints for item in getattr(fp, field)))

    q = shlex.quote
    units, files_, trees, shared = every("units"), every("files"), every("trees"), every("shared_dirs")
    lines = [f"systemctl disable --now {unit} 2>/dev/null || true" for unit in units]
    lines += [f"nft delete table inet {table} 2>/dev/null || true" for table in every("nft_tables")]
    if files_:
        lines.append(f"rm -f {' '.join(files_)}")  # not quoted: shell globs (the nginx logs)
    lines.append("systemctl daemon-reload")
    if units:
        lines.append(f"systemctl reset-failed {' '.join(units)} 2>/dev/null || true")
    lines += [line for fp in prints for line in fp.restore(state)]
    if trees:
        lines.append(f"rm -rf {' '.join(trees)}")
    if shared:
        lines.append(f"rmdir --ignore-fail-on-non-empty {' '.join(shared)} 2>/dev/null || true")
    accounts = every("accounts")
    lines += [remove_account_script(name) for name in state.created_users if name in accounts]
    if state.apt_installed and not keep_packages and any(fp.apt_packages for fp in prints):
        pkgs = " ".join(q(p) for p in state.apt_installed)
        lines.append(
            "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "
            f"purge -y -q {pkgs} && apt-get autoremove -y -q || true"
        )
    return "\n".join(lines)


def undeploy(
    target: SshTarget,
    options: DeployOptions | None = None,
    progress: DeployReporter | None = None,
    *,
    keep_packages: bool = False,
) -> None:
    """Stop and remove the service, the nginx site, files, accounts and packages deploy added."""
    options = options or DeployOptions()
    progress = progress or SILENT_REPORTER
    with _open(target, options, progress) as conn:
        check_privileges(conn)
        state = HostState.from_json(files.read_file(conn, STATE_FILE))
        progress.status("removing the service, nginx site, files and packages deploy installed")
        conn.run(undeploy_script(state, keep_packages=keep_packages), timeout_s=1800)
        removed = ", ".join(step.name for step in reversed(ORDER) if step.footprint != Footprint())
        progress.step_done("undeploy", True, f"removed what these steps left: {removed}")
