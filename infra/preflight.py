"""The pre-flight check: what would stop a stack's first `pulumi up`, found before anything is billed.

`synthdet check --stack NAME` runs this module (`python -m infra.preflight`),
and the Pulumi program runs the same checks at the start of every preview and
update (`in_program`), before it registers a single resource. They ask the
cloud's own APIs (infra/gcp/cloud_api.py, infra/aws/cloud_api.py):
credentials and project/account, APIs enabled, GPU quota against what the
stack needs, the GPU and machine type offered in the zone (and which other
zones offer them), the boot image, the networks quota, and who SSH admits.

Every problem is one line: what is wrong, where, and the command or console
page that fixes it. A blocker fails the check (exit 1) and the program (before
it creates anything); warnings do not.

Skipping it in the program: `SYNTHDET_PREFLIGHT=off` in the environment. It is
also skipped by itself when the program runs under Pulumi's test mocks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from infra.config import PROJECT, PROJECT_DIR, ConfigError, Settings, read_settings, resolve_path

PREFLIGHT_ENV = "SYNTHDET_PREFLIGHT"  # "off": the program skips the check
PROJECT_FILE = PROJECT_DIR / "Pulumi.yaml"
# Stand-in while synthdet:model is unset: the cloud checks do not need the checkpoint.
_NO_MODEL = "(not set)"


class Level(str, Enum):
    OK = "ok"
    WARNING = "warning"
    BLOCKER = "blocker"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what is wrong (or fine), where, and what fixes it."""

    level: Level
    topic: str  # credentials, api, quota, zone, image, network, ssh, config ...
    message: str
    fix: str = ""
    # Whether it depends on what is in use now: this stack's own VM counts there once it
    # exists, so the program (which runs on every update) only warns about these.
    headroom: bool = False

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.level.value:<7} {self.topic}: {self.message}{fix}"


def ok(topic: str, message: str) -> Finding:
    return Finding(Level.OK, topic, message)


def warning(topic: str, message: str, fix: str = "") -> Finding:
    return Finding(Level.WARNING, topic, message, fix)


def blocker(topic: str, message: str, fix: str = "", *, headroom: bool = False) -> Finding:
    return Finding(Level.BLOCKER, topic, message, fix, headroom)


class Stop(Exception):
    """Checking further is pointless (no credentials, offline, API off): the finding says why."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


@dataclass
class CloudResult:
    """What a cloud's checks found, and the zones a stockout can move to."""

    findings: list[Finding] = field(default_factory=list)
    # The stack key that places the host (gcp:zone, synthdet:availabilityZone), its value
    # now ("" when the cloud picks) and the zones offering GPU and machine type, in the
    # order to try them (the configured one first).
    zone_key: str = ""
    zone: str = ""
    zones: list[str] = field(default_factory=list)
    # Credentials or the network failed: the checks after it would only repeat that.
    stopped: bool = False


@dataclass(frozen=True)
class CheckContext:
    stack_name: str
    settings: Settings
    in_program: bool = False
    # Whether quota already in use blocks: not where this stack's own VM may be the user
    # (the program's every update, `synthdet up` of a stack that may exist).
    in_use_blocks: bool = True

    def config_set(self, key: str, value: str) -> str:
        """The exact command that sets a stack key."""
        return f"pulumi config set {key} {value} --stack {self.stack_name}"

    def cpu_stack_hint(self) -> str:
        """Where a CPU stack exists (issue: CPU cloud stacks), the way around GPU quota."""
        name = f"{self.settings.stack.cloud}-cpu"
        if (PROJECT_DIR / "stacks" / f"Pulumi.{name}.yaml").is_file():
            return f"; or serve without a GPU: the `{name}` stack needs no GPU quota"
        return ""


@dataclass
class Report:
    stack: str
    cloud: str
    findings: list[Finding]
    zone_key: str = ""
    zone: str = ""
    zones: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.level is Level.BLOCKER]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level is Level.WARNING]

    def summary(self) -> str:
        if self.blockers:
            return (
                f"{self.stack}: {len(self.blockers)} blocker(s), {len(self.warnings)} warning(s): "
                "fix the blockers, then run `pulumi up` (or `synthdet up`)"
            )
        extra = f" ({len(self.warnings)} warning(s))" if self.warnings else ""
        return f"{self.stack}: ready for `pulumi up`{extra}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [{**asdict(f), "level": f.level.value} for f in self.findings]
        data["blocked"] = bool(self.blockers)
        # What `synthdet check` prints, for callers that only relay it (`synthdet up`).
        data["lines"] = [f.line() for f in self.findings]
        data["summary"] = self.summary()
        return data


# --------------------------------------------------------------------- reading a stack


def stack_file(stack_name: str) -> Path:
    project = yaml.safe_load(PROJECT_FILE.read_text()) or {}
    return PROJECT_DIR / str(project.get("stackConfigDir") or ".") / f"Pulumi.{stack_name}.yaml"


def engine_value(value: Any) -> str:
    """Config as the engine hands it to a program: strings, JSON for structures."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _namespaced(key: str) -> str:
    return key if ":" in key else f"{PROJECT}:{key}"


def stack_config(stack_name: str) -> dict[str, str]:
    """The stack's config as the engine would pass it: Pulumi.yaml defaults, then the stack file.

    Encrypted (`secure:`) values are left out: only the Pulumi CLI can read them,
    and no key the check needs is a secret."""
    path = stack_file(stack_name)
    if not path.is_file():
        raise ConfigError(
            f"no stack file {path.relative_to(PROJECT_DIR)}: make one with "
            f"`cp stacks/Pulumi.gcp-t4.yaml {path.relative_to(PROJECT_DIR)} && "
            f"pulumi stack init {stack_name}`"
        )
    project = yaml.safe_load(PROJECT_FILE.read_text()) or {}
    config: dict[str, str] = {}
    for key, declared in (project.get("config") or {}).items():
        if isinstance(declared, dict) and "default" in declared:
            config[_namespaced(key)] = engine_value(declared["default"])
    for key, value in ((yaml.safe_load(path.read_text()) or {}).get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            continue
        config[_namespaced(key)] = engine_value(value)
    return config


def settings_from_config(config: Mapping[str, str]) -> tuple[Settings, list[Finding]]:
    """The program's own reading of a config (infra/config.py), plus findings about the model."""
    import pulumi

    findings: list[Finding] = []
    values = dict(config)
    model = values.get(f"{PROJECT}:model")
    if not model:
        values[f"{PROJECT}:model"] = _NO_MODEL
        findings.append(
            warning(
                "config",
                "synthdet:model is not set (the checkpoint to serve): "
                "`pulumi up` stops at preview until it is",
                "pulumi config set synthdet:model ./synthdet.pth",
            )
        )
    else:
        missing = [
            spec
            for spec in [model, *json.loads(values.get(f"{PROJECT}:extraModels") or "[]")]
            if not resolve_path(spec.split("=", 1)[-1]).is_file()
        ]
        if missing:
            findings.append(
                warning("config", f"checkpoint not found: {', '.join(missing)} (relative to {PROJECT_DIR})")
            )
    pulumi.runtime.set_all_config(values)
    return read_settings(), findings


# --------------------------------------------------------------------- the checks


def ssh_findings(ctx: CheckContext, lookup: Callable[[], str] | None = None) -> list[Finding]:
    """Who SSH will admit (single cloud hosts: the bootstrap needs SSH from here)."""
    from infra import network, ssh_access

    stack = ctx.settings.stack
    if stack.cloud == "ssh" or stack.behind_load_balancer:
        return []
    try:
        resolved = network.resolve_cidrs(stack.ssh_allowed_cidrs, lookup or network.my_public_ipv4)
    except network.PublicIpError as exc:
        return [blocker("ssh", str(exc))]
    line = ssh_access.describe(stack, ctx.stack_name, resolved)
    if stack.ssh_open_to_world():
        return [warning("ssh", f"SSH is open to the whole internet: {line}")]
    return [ok("ssh", line)]


def cloud_findings(ctx: CheckContext) -> CloudResult:
    cloud = ctx.settings.stack.cloud
    if cloud == "gcp":
        from infra.gcp import preflight as gcp_preflight

        return gcp_preflight.check(ctx)
    if cloud == "aws":
        from infra.aws import preflight as aws_preflight

        return aws_preflight.check(ctx)
    return CloudResult([ok("cloud", "the ssh stack creates no cloud resources: nothing to check there")])


def run_checks(
    ctx: CheckContext, *, lookup_ip: Callable[[], str] | None = None, check_ssh: bool = True
) -> Report:
    started = time.monotonic()
    result = cloud_findings(ctx)
    findings = list(result.findings)
    if check_ssh and not result.stopped:
        findings += ssh_findings(ctx, lookup_ip)
    findings = [_as_context_sees_it(ctx, f) for f in findings]
    return Report(
        stack=ctx.stack_name,
        cloud=ctx.settings.stack.cloud,
        findings=findings,
        zone_key=result.zone_key,
        zone=result.zone,
        zones=result.zones,
        seconds=round(time.monotonic() - started, 2),
    )


# In the program these only warn: Pulumi's providers may sign in in ways the check does not
# follow (a token, impersonation), and fail clearly themselves if they cannot.
PROVIDER_OWNED_TOPICS = {"credentials", "network"}


def _as_context_sees_it(ctx: CheckContext, finding: Finding) -> Finding:
    """A blocker that only warns here: usage that may be this stack's own VM and network (after
    its first up), or, in the program, a sign-in the provider may manage otherwise."""
    relaxed = (finding.headroom and not (ctx.in_use_blocks and not ctx.in_program)) or (
        ctx.in_program and finding.topic in PROVIDER_OWNED_TOPICS
    )
    if finding.level is Level.BLOCKER and relaxed:
        return Finding(Level.WARNING, finding.topic, finding.message, finding.fix, finding.headroom)
    return finding


def check_stack(stack_name: str, *, in_use_blocks: bool = True) -> Report:
    """`synthdet check --stack NAME`: read the stack like the program, then run every check."""
    try:
        settings, config_findings = settings_from_config(stack_config(stack_name))
    except ConfigError as exc:
        return Report(stack_name, "?", [blocker("config", " ".join(str(exc).split()))])
    report = run_checks(CheckContext(stack_name, settings, in_use_blocks=in_use_blocks))
    report.findings[:0] = config_findings
    return report


# --------------------------------------------------------------------- in the program


def under_mocks() -> bool:
    """Whether the program runs under `pulumi.runtime.set_mocks` (the tests), not the engine."""
    from pulumi.runtime.mocks import MockMonitor
    from pulumi.runtime.settings import get_monitor

    return isinstance(get_monitor(), MockMonitor)


def skipped_in_program() -> str | None:
    """Why the program does not run the check now (None: it does)."""
    if os.environ.get(PREFLIGHT_ENV, "").strip().lower() in {"off", "0", "false", "no"}:
        return f"{PREFLIGHT_ENV}=off"
    if under_mocks():
        return "the program runs under Pulumi's test mocks"
    return None


def in_program(settings: Settings) -> None:
    """The check at the start of every preview and update, before any resource exists.

    Blockers end the run with one message (pulumi.RunError: no traceback);
    warnings and the zones that offer the GPU go to the update's diagnostics."""
    import pulumi

    if skipped_in_program() is not None:
        return
    try:
        ctx = CheckContext(pulumi.get_stack(), settings, in_program=True)
        # SSH: the program looks its own address up (infra/network.py) and says so itself.
        report = run_checks(ctx, check_ssh=False)
    except ImportError as exc:  # an environment installed before the check's SDKs were added
        pulumi.log.warn(
            f"synthdet check skipped ({exc}): run `.venv/bin/pip install -e '.[infra]'` to get the cloud SDKs"
        )
        return
    except Exception as exc:  # noqa: BLE001 - a bug in the check must not stop a deploy
        pulumi.log.warn(f"synthdet check failed and was skipped ({type(exc).__name__}: {exc})")
        return
    for finding in report.findings:
        if finding.level is Level.WARNING:
            pulumi.log.warn(f"synthdet check: {finding.line()}")
        elif finding.level is Level.OK:
            pulumi.log.info(f"synthdet check: {finding.line()}")
    if report.blockers:
        lines = "\n".join(f.line() for f in report.blockers)
        raise pulumi.RunError(
            f"synthdet check found {len(report.blockers)} blocker(s); nothing was created:\n{lines}\n"
            f"(`synthdet check --stack {report.stack}` repeats the check; {PREFLIGHT_ENV}=off skips it)"
        )


# --------------------------------------------------------------------- command line


def print_report(report: Report, write: Callable[[str], None] = print) -> None:
    for finding in report.findings:
        write(finding.line())
    write(report.summary())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.preflight",
        description="Check a stack against its cloud account before `pulumi up` (synthdet check).",
    )
    parser.add_argument("--stack", required=True, help="the stack name (stacks/Pulumi.NAME.yaml)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    parser.add_argument(
        "--in-use-ok",
        action="store_true",
        help="quota already in use only warns (the stack may exist: its own VM uses it)",
    )
    args = parser.parse_args(argv)
    try:
        report = check_stack(args.stack, in_use_blocks=not args.in_use_ok)
    except ImportError as exc:
        missing = Finding(
            Level.BLOCKER, "setup", f"a cloud SDK is missing ({exc})", "`.venv/bin/pip install -e '.[infra]'`"
        )
        report = Report(args.stack, "?", [missing])
    except Exception as exc:  # noqa: BLE001 - a bug here must not print a traceback at a user
        unexpected = Finding(
            Level.BLOCKER,
            "check",
            f"the check itself failed ({type(exc).__name__}: {exc})",
            "please report it",
        )
        report = Report(args.stack, "?", [unexpected])
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print_report(report)
    return 1 if report.blockers else 0


if __name__ == "__main__":
    # Run as `python -m infra.preflight`, this file is `__main__`, and the cloud modules import
    # `infra.preflight` again: use that one, so that both sides share one Level and Finding.
    from infra.preflight import main as _main

    sys.exit(_main())
