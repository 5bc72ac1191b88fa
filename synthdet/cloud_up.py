"""`synthdet check` and `synthdet up`: the pre-flight check, then `pulumi up` that moves on from full zones.

The check itself belongs to the Pulumi side (infra/preflight.py reads the stack
the way the program does); this side runs it as `python -m infra.preflight`,
the way `synthdet qr --stack` runs the `pulumi` CLI, and reads its JSON.

`up_with_failover` drives the stack through Pulumi's Automation API. When the
cloud answers with a capacity error (a GCP stockout, AWS
InsufficientInstanceCapacity or Unsupported), it moves the stack's zone key
(`gcp:zone`, `synthdet:availabilityZone`) to the next zone the check found
offering the GPU and machine type, and tries again, one line per move:

- What the next try can reuse stays: the VPC, firewall rules, static IP or
  Elastic IP, key pair and security group are regional (or global), so the
  next `up` keeps them as they are. Moving `gcp:zone` changes the default GCP
  provider's configuration, which Pulumi applies as an update of the provider,
  never a replacement (pulumi-gcp marks none of project/region/zone
  `ForcesProviderReplace`, the only way a bridged provider's config change
  replaces what it manages), and every resource of the program names its
  region or zone itself (the region from `gcp:zone`, the same for every zone
  of the check's list): tests/infra/test_zone_move.py runs the program in two
  zones and finds only the VM's inputs changed.
- Only what this run made is ever destroyed: the stack's state is exported
  before the first `up`, and a resource is this run's when its URN was not in
  that snapshot or holds another id (a replacement made it). What this run left
  in a zone given up on (a VM a provider recorded half made) is destroyed, with
  what depends on it, before the zone key moves, or before giving up.
- A resource that was there before (a serving VM whose update must restart it,
  e.g. a new machine type, and the restart meets a full zone) is never
  destroyed by this: the failover stops with one line (ExistingInZone). Moving
  it is `--move-existing`: the zone key moves and Pulumi replaces the VM and its
  boot disk in the next zone (the static IP, hence URL and QR code, stays).
- If no zone has capacity, the zone key goes back to what it was.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from synthdet.json_line import NoJsonLine, TimedOut, run_json_line

CHECK_MODULE = "infra.preflight"
# What the check and `synthdet up` need installed: the `infra` extra (pyproject.toml).
NEEDED_MODULES = {"pulumi": "pulumi", "boto3": "boto3", "google.cloud.compute_v1": "google-cloud-compute"}
# (pattern in the error text, what it means); GCP first, then AWS.
CAPACITY_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"ZONE_RESOURCE_POOL_EXHAUSTED(?:_WITH_DETAILS)?"), "no capacity (stockout)"),
    (
        re.compile(r"does not have enough resources available to fulfill the request"),
        "no capacity (stockout)",
    ),
    (re.compile(r"InsufficientInstanceCapacity"), "no capacity (InsufficientInstanceCapacity)"),
    (re.compile(r"\bUnsupported\b: Your requested instance type"), "the instance type is not offered there"),
)
# Where the error names the zone: GCP's resource path or localized message, AWS's wording.
ZONE_IN_ERROR = (
    re.compile(r"zones/([a-z]+-[a-z]+\d+-[a-z])\b"),
    re.compile(r"in the ([a-z]+-[a-z]+\d+-[a-z]) zone"),
    re.compile(r"Availability Zone you requested \(([a-z]+-[a-z]+-\d+[a-z])\)"),
    re.compile(r"requested Availability Zone \(([a-z]+-[a-z]+-\d+[a-z])\)"),
)
# Stack state properties that place a resource in a zone.
ZONE_PROPERTIES = ("zone", "availabilityZone")


class CheckFailed(Exception):
    """The check could not run at all (the message is one line)."""


@dataclass(frozen=True)
class CheckResult:
    exit_code: int
    lines: list[str]
    summary: str
    zone_key: str = ""
    zone: str = ""
    zones: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.exit_code != 0


def missing_packages() -> list[str]:
    """The `infra` extra's packages this Python lacks (looked up, not imported)."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # a parent package (google.cloud) is missing
            return True

    return [package for module, package in NEEDED_MODULES.items() if absent(module)]


def check_command(stack: str, *, json_output: bool = False, in_use_ok: bool = False) -> list[str]:
    options = [*(["--json"] if json_output else []), *(["--in-use-ok"] if in_use_ok else [])]
    return [sys.executable, "-m", CHECK_MODULE, "--stack", stack, *options]


def run_check(stack: str, work_dir: Path, timeout_s: float = 120.0) -> CheckResult:
    """The check's verdict and the zones a stockout may move to (from its JSON).

    Quota in use only warns: `synthdet up` also updates stacks that exist, whose own VM uses it."""
    command = check_command(stack, json_output=True, in_use_ok=True)
    try:
        exit_code, report = run_json_line(command, work_dir, timeout_s)
    except TimedOut:
        raise CheckFailed(f"the pre-flight check did not finish within {timeout_s:.0f} s") from None
    except NoJsonLine as said:
        raise CheckFailed(f"the pre-flight check failed: {said}") from None
    return CheckResult(
        exit_code=exit_code,
        lines=list(report.get("lines", [])),
        summary=str(report.get("summary", "")),
        zone_key=str(report.get("zone_key", "")),
        zone=str(report.get("zone", "")),
        zones=[str(z) for z in report.get("zones", []) if z],
    )


# --------------------------------------------------------------------- capacity errors


@dataclass(frozen=True)
class CapacityError:
    what: str
    zone: str  # "" when the error text does not name it


def capacity_error(text: str) -> CapacityError | None:
    """Whether a failed `pulumi up` failed for lack of capacity in a zone, and which zone."""
    for pattern, what in CAPACITY_ERRORS:
        if pattern.search(text):
            zone = next((m[1] for p in ZONE_IN_ERROR if (m := p.search(text))), "")
            return CapacityError(what, zone)
    return None


# The last line of a Python traceback: `module.ExceptionName: message`.
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*: (\S.*)$")


def error_summary(text: str) -> str:
    """The line of a failed Pulumi command that says what failed (the log above has the rest).

    A dynamic provider (the bootstrap) fails with its Python traceback: its exception's message."""
    lines = [line.strip() for line in text.splitlines()]
    for start, line in enumerate(lines):
        if line.endswith("Traceback (most recent call last):"):
            raised = next((m[1] for rest in lines[start + 1 :] if (m := EXCEPTION_LINE.match(rest))), None)
            if raised:
                return raised
    details = [
        line.lstrip("* ").strip()
        for line in lines
        if line.startswith("* ") or (line.startswith("error:") and "update failed" not in line)
    ]
    chosen = next((line for line in details if not line.endswith("error occurred:")), None)
    return chosen or next((line for line in reversed(lines) if line), "pulumi failed")


# --------------------------------------------------------------------- the stack's state


def _short(value: Any) -> str:
    return str(value).rstrip("/").rsplit("/", 1)[-1]


def deployment_of(exported: Any) -> Mapping[str, Any]:
    """The `deployment` of `Stack.export_stack()` (empty for a stack never deployed)."""
    return getattr(exported, "deployment", None) or {}


def _resources(deployment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The stack's own resources: not the providers (whose config changes on a move)."""
    return [
        r
        for r in deployment.get("resources") or []
        if not str(r.get("type", "")).startswith("pulumi:providers:")
    ]


def resource_ids(deployment: Mapping[str, Any]) -> dict[str, str]:
    """URN -> the cloud's id, of every resource in the state (what exists now)."""
    return {str(r["urn"]): str(r.get("id") or "") for r in _resources(deployment)}


def zonal_resources(deployment: Mapping[str, Any] | None, zone: str | None) -> list[str]:
    """URNs of the stack's resources that sit in `zone` (by their `zone`/`availabilityZone`);
    zone None: in any zone."""
    found = []
    for resource in _resources(deployment or {}):
        if not resource.get("custom"):
            continue
        properties = {**(resource.get("inputs") or {}), **(resource.get("outputs") or {})}
        zones = {_short(properties[key]) for key in ZONE_PROPERTIES if properties.get(key)}
        if zones and (zone is None or zone in zones):
            found.append(str(resource["urn"]))
    return found


def with_dependents(deployment: Mapping[str, Any], urns: Sequence[str]) -> list[str]:
    """`urns` and every resource that depends on one of them (what a targeted destroy takes)."""
    doomed = list(urns)
    grew = True
    while grew:
        grew = False
        for resource in _resources(deployment):
            urn = str(resource["urn"])
            if urn in doomed:
                continue
            needs = {
                *(resource.get("dependencies") or []),
                *(u for us in (resource.get("propertyDependencies") or {}).values() for u in us),
                *([resource["parent"]] if resource.get("parent") else []),
                *([resource["deletedWith"]] if resource.get("deletedWith") else []),
            }
            if needs & set(doomed):
                doomed.append(urn)
                grew = True
    return doomed


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


# --------------------------------------------------------------------- the failover


class StackLike(Protocol):
    """What `up_with_failover` needs of `pulumi.automation.Stack` (tests pass a fake)."""

    def up(self, **kwargs: Any) -> Any: ...

    def destroy(self, **kwargs: Any) -> Any: ...

    def export_stack(self) -> Any: ...

    def set_config(self, key: str, value: Any, *, path: bool = False) -> None: ...

    def remove_config(self, key: str, *, path: bool = False) -> None: ...


class NoCapacity(Exception):
    """Every zone was tried; the message is one line."""


class ExistingInZone(Exception):
    """The full zone holds resources the stack had before this run: nothing was destroyed."""

    def __init__(self, said: str) -> None:
        super().__init__(said)
        self.said = said

    def line(self, stack: str) -> str:
        """What happened and what to do, one line."""
        return (
            f"{self.said}: run `synthdet up --stack {stack}` again later, or "
            f"`synthdet up --stack {stack} --move-existing` to replace the VM and its boot disk in the "
            "next zone offering it (same static IP, URL and QR code; the host is deployed anew)"
        )


@dataclass(frozen=True)
class ZonePlan:
    key: str  # gcp:zone or synthdet:availabilityZone
    zone: str  # configured now ("" where the cloud picks)
    zones: list[str]  # the zones offering GPU and machine type, in the order to try


def up_with_failover(
    stack: StackLike,
    plan: ZonePlan,
    *,
    say: Callable[[str], None],
    on_output: Callable[[str], None] | None = None,
    command_error: type[Exception] | None = None,
    config_value: Callable[[str], Any] | None = None,
    move_existing: bool = False,
) -> tuple[Any, str]:
    """`stack.up()`, moving to the next zone on each capacity error; (its result, the zone it ended in).

    Destroys only what this run made (see the module's docstring); with `move_existing`, a
    capacity error in the zone of a resource that was there before moves the zone key too."""
    if command_error is None or config_value is None:
        from pulumi.automation import CommandError, ConfigValue

        command_error, config_value = command_error or CommandError, config_value or ConfigValue
    # What exists before this run: never destroyed here, whatever happens below.
    before = resource_ids(deployment_of(stack.export_stack()))
    zone, tried = plan.zone, []

    def put_zone_back() -> None:  # leave the stack's zone as the user had it
        if zone != plan.zone:
            if plan.zone:
                stack.set_config(plan.key, config_value(plan.zone))
            else:
                stack.remove_config(plan.key)

    while True:
        try:
            return stack.up(on_output=on_output), zone
        except command_error as exc:
            capacity = capacity_error(str(exc))
            if capacity is None or not plan.key:
                raise
            failed = capacity.zone or zone
            tried.append(failed)
            now = deployment_of(stack.export_stack())
            ids = resource_ids(now)
            # An unnamed zone (EC2 picked one, the error does not say): any zone may be meant.
            there = zonal_resources(now, failed or None)
            existing = [u for u in there if u in before and before[u] == ids[u]]
            if existing and not move_existing:
                put_zone_back()
                raise ExistingInZone(
                    f"{failed or 'the zone of its VM'}: {capacity.what} for what this stack already had "
                    f"there ({', '.join(_name(u) for u in existing)}, which may be stopped now); nothing "
                    f"was deleted and {plan.key} stays {plan.zone or '(unset)'}"
                ) from None
            leftovers = with_dependents(now, [u for u in there if u not in existing] if failed else [])
            kept = [u for u in leftovers if u in before and before[u] == ids[u]]
            if kept:  # a resource from before depends on this run's: destroying it is not ours
                put_zone_back()
                made = ", ".join(_name(u) for u in leftovers if u not in kept)
                raise ExistingInZone(
                    f"{failed}: {capacity.what}; this run's {made} there cannot go without "
                    f"{', '.join(_name(u) for u in kept)} from before; nothing was deleted and "
                    f"{plan.key} stays {plan.zone or '(unset)'}"
                ) from None
            if leftovers:  # all of them made by this run: the engine refuses if one is missed
                stack.destroy(target=leftovers, target_dependents=False, on_output=on_output)
            remaining = [z for z in plan.zones if z not in tried]
            if not remaining:
                put_zone_back()
                raise NoCapacity(
                    f"{failed}: {capacity.what}, and so were the other zones that offer it "
                    f"({', '.join(t for t in tried if t) or 'none'}); {plan.key} is back to "
                    f"{plan.zone or '(unset)'}: try again later, another region, or spot/on-demand"
                ) from None
            following = remaining[0]
            removed = f"; removed {len(leftovers)} resource(s) left there" if leftovers else ""
            moving = (
                f"; {', '.join(_name(u) for u in existing)} from before: replacing the VM and its boot disk "
                "(--move-existing)"
                if existing
                else ""
            )
            say(
                f"{failed or 'the zone the cloud picked'}: {capacity.what}{removed}; moving {plan.key} to "
                f"{following} and trying again ({len(tried)} of {len(plan.zones)} zones tried){moving}"
            )
            stack.set_config(plan.key, config_value(following))
            zone = following


def select_stack(stack_name: str, work_dir: Path) -> Any:
    """The stack through the Automation API, with the Pulumi CLI from PATH or ~/.pulumi/bin."""
    import shutil

    from pulumi import automation as auto

    options = None
    if shutil.which("pulumi") is None:
        root = Path.home() / ".pulumi"
        if not (root / "bin" / "pulumi").is_file():
            raise CheckFailed(
                "the Pulumi CLI is not installed: `curl -fsSL https://get.pulumi.com | sh` "
                "(it goes to ~/.pulumi/bin; open a new shell or add that to PATH)"
            )
        options = auto.LocalWorkspaceOptions(pulumi_command=auto.PulumiCommand(root=str(root)))
    try:
        return auto.select_stack(stack_name=stack_name, work_dir=str(work_dir), opts=options)
    except auto.StackNotFoundError:
        raise CheckFailed(
            f"no Pulumi stack {stack_name!r} in this backend: `pulumi stack init {stack_name}` "
            "(docs/pulumi.md, Deploy)"
        ) from None
    except auto.CommandError as exc:
        raise CheckFailed(f"pulumi: {error_summary(str(exc))}") from None


def outputs_summary(result: Any, names: Sequence[str] = ("public_ip", "address", "hourly_cost_usd")) -> str:
    outputs = getattr(result, "outputs", {}) or {}
    shown = [f"{n} {getattr(outputs[n], 'value', outputs[n])}" for n in names if n in outputs]
    return ", ".join(shown)
