"""`synthdet up`: a stockout in one zone ends with the stack serving from the next, nothing left behind.

The Automation API is stubbed by `FakeStack`: a stack over a tiny cloud that
creates what the program creates (global/regional network, firewall rule and
static IP; the zonal VM and its boot disk; the bootstrap on the VM) in the
zone its config names, and fails like the providers do, with their real error
texts, where the zone has no capacity.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest
from pulumi.automation import CommandError, ConfigValue
from pulumi.automation._cmd import CommandResult
from typer.testing import CliRunner

from synthdet import json_line
from synthdet.cli import app
from synthdet.cloud_up import (
    ExistingInZone,
    NoCapacity,
    ZonePlan,
    capacity_error,
    error_summary,
    up_with_failover,
    zonal_resources,
)

# What `pulumi up` prints when the provider's create fails, as the providers word it.
GCP_STOCKOUT = """\
Updating (my-gcp-t4):
 +  gcp:compute:Instance synthdet-vm creating (14s) error: 1 error occurred:
 +  gcp:compute:Instance synthdet-vm **creating failed** error: 1 error occurred:
Diagnostics:
  gcp:compute:Instance (synthdet-vm):
    error: 1 error occurred:
    \t* Error waiting for instance to create: The zone 'projects/demo-project/zones/{zone}' does not have \
enough resources available to fulfill the request.  Try a different zone, or try again later.

  pulumi:pulumi:Stack (synthdet-my-gcp-t4):
    error: update failed
"""
GCP_STOCKOUT_WITH_DETAILS = """\
    error: 1 error occurred:
    \t* Error creating instance: googleapi: Error 503: ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone \
'projects/demo-project/zones/{zone}' does not have enough resources available to fulfill the request.  \
'(resource type:compute)'., zoneResourcePoolExhaustedWithDetails
"""
AWS_CAPACITY = """\
  aws:ec2:Instance (synthdet-vm):
    error: 1 error occurred:
    \t* creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 500, \
RequestID: 5c1f0d5e-0000-4000-8000-000000000000, api error InsufficientInstanceCapacity: We currently do not \
have sufficient g4dn.xlarge capacity in the Availability Zone you requested ({zone}). Our system will be \
working on provisioning additional capacity. You can currently get g4dn.xlarge capacity by not specifying an \
Availability Zone in your request or choosing us-east-1b, us-east-1c, us-east-1d, us-east-1f.
"""
AWS_UNSUPPORTED = """\
    \t* creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 400, \
RequestID: 0b5e2a4c-0000-4000-8000-000000000000, api error Unsupported: Your requested instance type \
(g4dn.xlarge) is not supported in your requested Availability Zone ({zone}). Please retry your request by \
not specifying an Availability Zone or choosing us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1f.
"""
QUOTA_EXCEEDED = """\
    \t* Error creating instance: googleapi: Error 403: Quota 'NVIDIA_T4_GPUS' exceeded.  \
Limit: 0.0 in region us-central1., quotaExceeded
"""

# An update of a serving stack that restarts its VM (a new machine type: GCP stops the VM
# for the update, `allow_stopping_for_update`; EC2 stops, modifies and starts the instance)
# and meets a full zone on the way back up.
GCP_RESTART_STOCKOUT = """\
  gcp:compute:Instance (synthdet-vm):
    error: 1 error occurred:
    \t* Error waiting for starting instance: The zone 'projects/demo-project/zones/{zone}' does not have \
enough resources available to fulfill the request.  Try a different zone, or try again later.
"""
AWS_RESTART_CAPACITY = """\
  aws:ec2:Instance (synthdet-vm):
    error: 1 error occurred:
    \t* updating EC2 Instance (i-0123456789abcdef0): starting EC2 Instance: operation error EC2: \
StartInstances, https response error StatusCode: 500, RequestID: 1d3c7a8e-0000-4000-8000-000000000000, \
api error InsufficientInstanceCapacity: Insufficient capacity.
"""


def stockout(text: str, zone: str) -> CommandError:
    return CommandError(CommandResult(stdout=text.format(zone=zone), stderr="", code=255))


VM = "urn:pulumi:s::synthdet::gcp:compute/instance:Instance::synthdet-vm"
BOOTSTRAP = "urn:pulumi:s::synthdet::synthdet:Bootstrap::bootstrap"


@dataclass
class Resource:
    urn: str
    type: str
    zone: str | None = None  # None: regional or global
    depends_on: list[str] = field(default_factory=list)
    id: str = ""  # the cloud's id, given at creation (a replacement gets a new one)


@dataclass
class UpResult:
    outputs: dict[str, Any]


class FakeStack:
    """`pulumi.automation.Stack` over a fake cloud (its state is what exists)."""

    REGIONAL = (
        ("gcp:compute/network:Network", "synthdet-net"),
        ("gcp:compute/firewall:Firewall", "synthdet-allow-ssh"),
        ("gcp:compute/address:Address", "synthdet-ip"),
    )

    def __init__(
        self,
        zone_key: str,
        zone: str,
        no_capacity: dict[str, str],
        *,
        partial_vm: bool = False,
        error: str = GCP_STOCKOUT,
        replaces_vm: bool = False,
    ) -> None:
        self.config = {zone_key: zone}
        self.zone_key = zone_key
        self.no_capacity = no_capacity  # zone -> error template
        self.partial_vm = partial_vm  # a failed create recorded in the state (as a provider may)
        self.error = error
        # The update replaces the VM where it is (a new disk size ...): delete it, then create.
        self.replaces_vm = replaces_vm
        self.resources: dict[str, Resource] = {}
        self.serial = 0
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.destroy_calls: list[list[str]] = []
        self.ups = 0

    @classmethod
    def deployed(cls, zone_key: str, zone: str, no_capacity: dict[str, str], **kwargs: Any) -> FakeStack:
        """A stack a earlier `up` made (serving from `zone`), whose next `up` meets `no_capacity`."""
        stack = cls(zone_key, zone, {}, **kwargs)
        stack.replaces_vm, replaces = False, stack.replaces_vm
        stack.up()
        stack.no_capacity, stack.replaces_vm = no_capacity, replaces
        stack.created, stack.deleted, stack.ups = [], [], 0
        return stack

    # -- the Automation API's surface
    def up(self, on_output=None, **_: Any) -> UpResult:
        self.ups += 1
        zone = self.config.get(self.zone_key, "")
        for type_, name in self.REGIONAL:
            self._create(Resource(f"urn:pulumi:s::synthdet::{type_}::{name}", type_))
        vm = VM
        old = self.resources.get(vm)
        if old is not None and (old.zone != zone or self.replaces_vm):
            # Another zone (or a replacing change): replaced, delete_before_replace, the
            # bootstrap on it first.
            self._delete(BOOTSTRAP)
            self._delete(vm)
            self.replaces_vm = False
        if zone in self.no_capacity:
            if self.partial_vm:
                self._create(Resource(vm, "gcp:compute/instance:Instance", zone))
            if on_output:
                on_output("error: update failed")
            raise stockout(self.no_capacity[zone], zone)
        self._create(Resource(vm, "gcp:compute/instance:Instance", zone))
        self._create(Resource(BOOTSTRAP, "synthdet:Bootstrap", None, [vm]))
        return UpResult(outputs={"public_ip": "203.0.113.10"})

    def export_stack(self) -> Any:
        return type(
            "Deployment",
            (),
            {
                "version": 3,
                "deployment": {
                    "resources": [
                        {
                            "urn": r.urn,
                            "id": r.id,
                            "type": r.type,
                            "custom": True,
                            "inputs": {"zone": r.zone} if r.zone else {},
                            "outputs": {
                                "zone": f"https://www.googleapis.com/compute/v1/projects/p/zones/{r.zone}"
                            }
                            if r.zone
                            else {},
                            "dependencies": r.depends_on,
                        }
                        for r in self.resources.values()
                    ]
                    + [
                        {
                            "urn": "urn:pulumi:s::synthdet::pulumi:providers:gcp::default",
                            "type": "pulumi:providers:gcp",
                            "custom": True,
                            "inputs": {"zone": "us-central1-a"},
                        }
                    ]
                },
            },
        )()

    def destroy(self, target: list[str], target_dependents: bool = False, on_output=None, **_: Any) -> None:
        self.destroy_calls.append(list(target))
        doomed = set(target)
        dependents = {r.urn for r in self.resources.values() if set(r.depends_on) & doomed} - doomed
        if dependents and not target_dependents:  # as the engine refuses a targeted destroy
            raise CommandError(
                CommandResult(stdout="", stderr=f"error: {sorted(dependents)} depend on a target", code=255)
            )
        doomed |= dependents
        for urn in doomed:
            self._delete(urn)

    def set_config(self, key: str, value: ConfigValue, *, path: bool = False) -> None:
        self.config[key] = value.value

    def remove_config(self, key: str, *, path: bool = False) -> None:
        self.config.pop(key, None)

    # -- the fake cloud
    def _create(self, resource: Resource) -> None:
        if resource.urn not in self.resources:
            self.serial += 1
            resource.id = f"{resource.urn.rsplit('::', 1)[-1]}-{self.serial}"
            self.resources[resource.urn] = resource
            self.created.append(resource.urn)

    def _delete(self, urn: str) -> None:
        if self.resources.pop(urn, None) is not None:
            self.deleted.append(urn)

    def in_zone(self, zone: str) -> list[str]:
        return [r.urn for r in self.resources.values() if r.zone == zone]


GCP_PLAN = ZonePlan("gcp:zone", "us-central1-a", ["us-central1-a", "us-central1-b", "us-central1-c"])


def test_a_stockout_in_zone_a_ends_serving_from_zone_b_with_one_line_about_the_move() -> None:
    """Why nothing stays in zone a: the provider recorded no VM for the failed create, so zone a
    holds nothing of the stack's; the regional network, firewall and IP are kept (created once,
    never deleted) and the next `up` only adds the VM and bootstrap in zone b."""
    stack = FakeStack("gcp:zone", "us-central1-a", {"us-central1-a": GCP_STOCKOUT})
    said: list[str] = []
    result, zone = up_with_failover(stack, GCP_PLAN, say=said.append)
    assert zone == "us-central1-b" and stack.config["gcp:zone"] == "us-central1-b"
    assert result.outputs["public_ip"] == "203.0.113.10"
    assert said == [
        "us-central1-a: no capacity (stockout); moving gcp:zone to us-central1-b and trying again "
        "(1 of 3 zones tried)"
    ]
    assert stack.in_zone("us-central1-a") == [] and stack.deleted == []
    regional = [u for u in stack.created if "Instance" not in u and "Bootstrap" not in u]
    assert len(regional) == 3 and all(u in stack.resources for u in regional)
    assert stack.in_zone("us-central1-b") == [
        "urn:pulumi:s::synthdet::gcp:compute/instance:Instance::synthdet-vm"
    ]


def test_a_vm_left_in_the_abandoned_zone_is_destroyed_before_the_move() -> None:
    """A provider that records a half-made VM in the state would leave it (and its disk) billing in
    zone a: `synthdet up` destroys whatever of the stack sits in zone a, with its dependents, by a
    targeted destroy, and only that; the regional resources stay for zone b."""
    stack = FakeStack("gcp:zone", "us-central1-a", {"us-central1-a": GCP_STOCKOUT}, partial_vm=True)
    said: list[str] = []
    _, zone = up_with_failover(stack, GCP_PLAN, say=said.append)
    vm = "urn:pulumi:s::synthdet::gcp:compute/instance:Instance::synthdet-vm"
    assert zone == "us-central1-b"
    assert stack.destroy_calls == [[vm]] and stack.deleted == [vm]
    assert stack.in_zone("us-central1-a") == []
    assert "removed 1 resource(s) left there" in said[0]


def test_two_full_zones_then_success_one_line_each() -> None:
    stack = FakeStack(
        "gcp:zone",
        "us-central1-a",
        {"us-central1-a": GCP_STOCKOUT, "us-central1-b": GCP_STOCKOUT_WITH_DETAILS},
    )
    said: list[str] = []
    _, zone = up_with_failover(stack, GCP_PLAN, say=said.append)
    assert zone == "us-central1-c" and stack.ups == 3 and len(said) == 2
    assert said[1].startswith("us-central1-b: no capacity (stockout); moving gcp:zone to us-central1-c")


def test_when_every_zone_is_full_it_says_so_and_puts_the_zone_back() -> None:
    full = dict.fromkeys(GCP_PLAN.zones, GCP_STOCKOUT)
    stack = FakeStack("gcp:zone", "us-central1-a", full)
    with pytest.raises(NoCapacity) as raised:
        up_with_failover(stack, GCP_PLAN, say=lambda _: None)
    assert "us-central1-a, us-central1-b, us-central1-c" in str(raised.value)
    assert stack.config["gcp:zone"] == "us-central1-a"
    assert all(not stack.in_zone(z) for z in GCP_PLAN.zones)


def test_aws_insufficient_capacity_moves_the_availability_zone() -> None:
    plan = ZonePlan("synthdet:availabilityZone", "", ["us-east-1a", "us-east-1b", "us-east-1c"])
    stack = FakeStack("synthdet:availabilityZone", "", {"": AWS_CAPACITY.replace("{zone}", "us-east-1a")})
    said: list[str] = []
    _, zone = up_with_failover(stack, plan, say=said.append)
    # EC2 picked us-east-1a (the error names it): the next zone is b, not a again.
    assert zone == "us-east-1b" and stack.config["synthdet:availabilityZone"] == "us-east-1b"
    assert said[0].startswith("us-east-1a: no capacity (InsufficientInstanceCapacity); moving")


def test_aws_unsupported_in_the_zone_moves_too_and_unset_zone_is_restored_when_all_fail() -> None:
    plan = ZonePlan("synthdet:availabilityZone", "", ["us-east-1b"])
    no_capacity = {"": AWS_UNSUPPORTED.replace("{zone}", "us-east-1e"), "us-east-1b": AWS_CAPACITY}
    stack = FakeStack("synthdet:availabilityZone", "", no_capacity)
    said: list[str] = []
    with pytest.raises(NoCapacity) as raised:
        up_with_failover(stack, plan, say=said.append)
    assert said[0].startswith("us-east-1e: the instance type is not offered there; moving")
    assert "us-east-1b: no capacity (InsufficientInstanceCapacity)" in str(raised.value)
    assert "synthdet:availabilityZone" not in stack.config  # as the user had it: unset


def test_other_errors_are_not_a_reason_to_move() -> None:
    stack = FakeStack("gcp:zone", "us-central1-a", {"us-central1-a": QUOTA_EXCEEDED})
    with pytest.raises(CommandError):
        up_with_failover(stack, GCP_PLAN, say=lambda _: None)
    assert stack.ups == 1 and stack.config["gcp:zone"] == "us-central1-a"


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        (GCP_STOCKOUT, "us-central1-a"),
        (GCP_STOCKOUT_WITH_DETAILS, "us-central1-f"),
        (AWS_CAPACITY, "us-east-1d"),
        (AWS_UNSUPPORTED, "us-east-1e"),
    ],
)
def test_capacity_errors_and_their_zone_are_recognised(text: str, zone: str) -> None:
    found = capacity_error(text.format(zone=zone))
    assert found is not None and found.zone == zone
    assert capacity_error(QUOTA_EXCEEDED) is None


def test_zonal_resources_reads_zone_urls_and_skips_providers() -> None:
    stack = FakeStack("gcp:zone", "us-central1-a", {}, partial_vm=True)
    stack.up()
    assert zonal_resources(stack.export_stack().deployment, "us-central1-a") == [
        "urn:pulumi:s::synthdet::gcp:compute/instance:Instance::synthdet-vm"
    ]


def test_synthdet_up_checks_first_then_fails_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command: the check's zone list (its JSON), the Automation API's stack, the one-line move."""
    stack = FakeStack("gcp:zone", "us-central1-a", {"us-central1-a": GCP_STOCKOUT})
    report = {
        "lines": ["ok      zone: us-central1-a offers nvidia-tesla-t4 with n1-standard-4"],
        "summary": "my-gcp-t4: ready for `pulumi up`",
        "zone_key": "gcp:zone",
        "zone": "us-central1-a",
        "zones": ["us-central1-a", "us-central1-b"],
    }
    ran: list[list[str]] = []

    def fake_run(command: list[str], **_: Any) -> subprocess.CompletedProcess:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(report) + "\n", stderr="")

    monkeypatch.setattr(json_line.subprocess, "run", fake_run)
    monkeypatch.setattr("synthdet.commands.cloud.select_stack", lambda name, work_dir: stack)
    result = CliRunner().invoke(app, ["up", "--stack", "my-gcp-t4"])
    assert result.exit_code == 0, result.output
    assert ran and ran[0][-5:] == ["infra.preflight", "--stack", "my-gcp-t4", "--json", "--in-use-ok"]
    moves = [line for line in result.output.splitlines() if "moving gcp:zone" in line]
    assert len(moves) == 1 and "us-central1-a: no capacity (stockout)" in moves[0]
    assert "up in us-central1-b" in result.output and "synthdet qr --stack my-gcp-t4" in result.output


def test_without_the_infra_extra_check_and_up_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else find_spec(name, *a)
    )
    for command in ("check", "up"):
        result = CliRunner().invoke(app, [command, "--stack", "my-gcp-t4"])
        assert result.exit_code == 1
        flat = " ".join(result.output.split())
        assert "boto3 not installed here (the `infra` extra)" in flat and "pip install -e '.[infra]'" in flat


def test_synthdet_up_stops_on_a_blocker_before_pulumi(monkeypatch: pytest.MonkeyPatch) -> None:
    report = {
        "lines": ["blocker quota: GPU quota NVIDIA_T4_GPUS in us-central1 is 0"],
        "summary": "x: 1 blocker(s)",
    }
    monkeypatch.setattr(
        json_line.subprocess,
        "run",
        lambda command, **_: subprocess.CompletedProcess(command, 1, stdout=json.dumps(report), stderr=""),
    )

    def no_pulumi(*_: Any) -> None:
        raise AssertionError("pulumi must not run when the check found a blocker")

    monkeypatch.setattr("synthdet.commands.cloud.select_stack", no_pulumi)
    result = CliRunner().invoke(app, ["up", "--stack", "my-gcp-t4"])
    assert result.exit_code == 1 and "NVIDIA_T4_GPUS in us-central1 is 0" in result.output


# ------------------------------------------------------------------ a stack that already serves


AWS_PLAN = ZonePlan("synthdet:availabilityZone", "us-east-1a", ["us-east-1a", "us-east-1b", "us-east-1c"])


def ids(stack: FakeStack) -> dict[str, str]:
    return {urn: r.id for urn, r in stack.resources.items()}


@pytest.mark.parametrize(
    ("plan", "error"),
    [(GCP_PLAN, GCP_RESTART_STOCKOUT), (AWS_PLAN, AWS_RESTART_CAPACITY)],
    ids=["gcp", "aws"],
)
def test_a_serving_vm_that_cannot_restart_in_its_zone_is_never_destroyed(plan: ZonePlan, error: str) -> None:
    """A new machine type restarts the stack's VM; the restart meets a full zone. Moving on
    would delete the VM and its boot disk (and the deployment on it): `synthdet up` stops
    instead, with one line, and every resource keeps its id (AWS names no zone: the
    configured one is meant)."""
    stack = FakeStack.deployed(plan.key, plan.zone, {plan.zone: error})
    before = ids(stack)
    said: list[str] = []
    with pytest.raises(ExistingInZone) as raised:
        up_with_failover(stack, plan, say=said.append)
    assert stack.destroy_calls == [] and stack.deleted == [] and ids(stack) == before
    assert stack.config[plan.key] == plan.zone and said == [] and stack.ups == 1
    line = raised.value.line("my-stack")
    assert "\n" not in line
    assert line.startswith(f"{plan.zone}: no capacity")
    assert "synthdet-vm" in line and "nothing was deleted" in line
    assert "synthdet up --stack my-stack --move-existing" in line


def test_with_move_existing_the_vm_moves_and_the_address_stays() -> None:
    """Asked for, the move is Pulumi's own replacement of the VM in the next zone: `synthdet up`
    destroys nothing itself, and the static IP (the URL and QR code) keeps its id."""
    stack = FakeStack.deployed("gcp:zone", "us-central1-a", {"us-central1-a": GCP_RESTART_STOCKOUT})
    regional = {u: i for u, i in ids(stack).items() if stack.resources[u].zone is None and u != BOOTSTRAP}
    old_vm = stack.resources[VM].id
    said: list[str] = []
    _, zone = up_with_failover(stack, GCP_PLAN, say=said.append, move_existing=True)
    assert zone == "us-central1-b" and stack.destroy_calls == []
    assert stack.in_zone("us-central1-a") == [] and stack.in_zone("us-central1-b") == [VM]
    assert stack.resources[VM].id != old_vm
    assert {u: ids(stack)[u] for u in regional} == regional
    assert len(said) == 1 and "replacing the VM and its boot disk (--move-existing)" in said[0]


def test_a_vm_this_update_replaced_and_left_half_made_is_its_own_and_goes() -> None:
    """A replacing change (delete first) deleted the old VM; the new one failed half made in the
    full zone. Its URN is the old one's but its id is new: made by this run, so it is destroyed
    and the stack moves, as for a new stack."""
    stack = FakeStack.deployed(
        "gcp:zone", "us-central1-a", {"us-central1-a": GCP_STOCKOUT}, partial_vm=True, replaces_vm=True
    )
    old_vm = stack.resources[VM].id
    _, zone = up_with_failover(stack, GCP_PLAN, say=lambda _: None)
    assert zone == "us-central1-b" and stack.destroy_calls == [[VM]]
    assert stack.in_zone("us-central1-a") == [] and stack.resources[VM].id != old_vm


def test_when_every_zone_is_full_nothing_made_by_this_run_is_left_in_any() -> None:
    full = dict.fromkeys(GCP_PLAN.zones, GCP_STOCKOUT)
    stack = FakeStack("gcp:zone", "us-central1-a", full, partial_vm=True)
    with pytest.raises(NoCapacity):
        up_with_failover(stack, GCP_PLAN, say=lambda _: None)
    assert all(not stack.in_zone(z) for z in GCP_PLAN.zones)
    assert stack.config["gcp:zone"] == "us-central1-a"


def test_synthdet_up_on_a_serving_stack_stops_with_one_line_and_moves_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = {
        "lines": [],
        "summary": "my-gcp-t4: ready for `pulumi up`",
        "zone_key": "gcp:zone",
        "zone": "us-central1-a",
        "zones": ["us-central1-a", "us-central1-b"],
    }
    monkeypatch.setattr(
        json_line.subprocess,
        "run",
        lambda command, **_: subprocess.CompletedProcess(command, 0, stdout=json.dumps(report), stderr=""),
    )
    stack = FakeStack.deployed("gcp:zone", "us-central1-a", {"us-central1-a": GCP_RESTART_STOCKOUT})
    before = ids(stack)
    monkeypatch.setattr("synthdet.commands.cloud.select_stack", lambda name, work_dir: stack)
    refused = CliRunner().invoke(app, ["up", "--stack", "my-gcp-t4"], terminal_width=400)
    assert refused.exit_code == 1 and ids(stack) == before
    error = refused.output.splitlines()[-1]  # after the `pulumi up` log it relayed
    assert error.startswith("error: us-central1-a: no capacity (stockout)") and "--move-existing" in error
    moved = CliRunner().invoke(app, ["up", "--stack", "my-gcp-t4", "--move-existing"], terminal_width=400)
    assert moved.exit_code == 0, moved.output
    assert stack.in_zone("us-central1-b") == [VM] and "up in us-central1-b" in moved.output


def test_a_bootstrap_failure_is_summed_up_by_its_exceptions_message() -> None:
    """The bootstrap is a Python dynamic provider: Pulumi relays its traceback. `synthdet up`
    says its last line's message (a stopped VM, tests/unit/test_stopped_vm.py), not 'Traceback'."""
    text = """\
Diagnostics:
  pulumi-python:dynamic/synthdet:Bootstrap (bootstrap):
    error: Traceback (most recent call last):
      File "/work/.venv/lib/python3.11/site-packages/pulumi/dynamic/__main__.py", line 85, in wrapper
        return fn(self, request, context)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/infra/bootstrap_resource.py", line 212, in _deploy
        raise VmNotRunning(stopped)
    infra.bootstrap_resource.VmNotRunning: the VM is stopped (idle stop?): \
`synthdet wake --stack my-gcp-t4`, then rerun (gcp us-central1-a synthdet-vm-1a2b3c4: TERMINATED)

  pulumi:pulumi:Stack (synthdet-my-gcp-t4):
    error: update failed
"""
    assert error_summary(text) == (
        "the VM is stopped (idle stop?): `synthdet wake --stack my-gcp-t4`, then rerun "
        "(gcp us-central1-a synthdet-vm-1a2b3c4: TERMINATED)"
    )
    assert error_summary(GCP_STOCKOUT.format(zone="us-central1-a")).startswith("Error waiting for instance")
