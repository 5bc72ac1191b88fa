"""Idle stop in the Pulumi program (issue: no surprise bill), under mocks.

The host powers itself off (bootstrap/steps/idle_stop.py); the cloud must then keep
the machine stopped and cheap, with its disk and address (the QR code stays valid):
GCP stops a VM whose guest shuts down as long as nothing DELETEs it; AWS needs
`instance_initiated_shutdown_behavior = stop`. `synthdet wake`/`status` read plain
outputs: where the VM is, the idle setting, what it costs stopped.
"""

from __future__ import annotations

import pytest

from infra.config import ConfigError
from tests.infra.harness import BOOTSTRAP_TYPE, GCP_PROJECT, run_program

GCP_VM = "gcp:compute/instance:Instance"
AWS_VM = "aws:ec2/instance:Instance"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
# Stopped: the boot disk (125 GB by default) and the address; prices restated from
# infra/prices.yaml (pd-balanced $0.10/GB-month, gp3 $0.08/GB-month, 730 h a month; a
# reserved unused GCP address $0.01/h, an Elastic IP $0.005/h).
GCP_T4_STOPPED = round(125 * 0.10 / 730 + 0.01, 4)
AWS_T4_STOPPED = round(125 * 0.08 / 730 + 0.005, 4)


def idle(minutes: int = 30) -> dict[str, int]:
    return {"synthdet:idleStopMinutes": minutes}


def test_the_bootstrap_installs_the_idle_stop(required):
    run = run_program("gcp-t4", required("gcp-t4") | idle(30))
    assert run.one(BOOTSTRAP_TYPE).plain("options")["idle_stop_minutes"] == 30
    assert run.outputs["idle_stop_minutes"] == 30


def test_off_by_default_and_the_end_of_up_says_how_to_turn_it_on(required):
    run = run_program("gcp-t4", required("gcp-t4"))
    assert run.one(BOOTSTRAP_TYPE).plain("options")["idle_stop_minutes"] == 0
    assert run.outputs["idle_stop_minutes"] == 0
    (line,) = [line for line in run.logs if line.startswith("synthdet: this host runs")]
    assert "pulumi config set synthdet:idleStopMinutes 30" in line and "$0.56/h" in line  # 0.5621


@pytest.mark.parametrize(
    ("overrides", "action"),
    [({}, None), ({"synthdet:maxRunHours": 8}, "STOP"), ({"synthdet:spot": True}, "STOP")],
)
def test_gcp_keeps_a_vm_that_powered_itself_off(required, overrides, action):
    run = run_program("gcp-t4", required("gcp-t4") | idle() | overrides)
    scheduling = run.one(GCP_VM).plain("scheduling")
    # A guest shutdown leaves the VM TERMINATED (stopped: disk and static IP kept); nothing
    # may turn that into a deletion.
    assert scheduling.get("instanceTerminationAction") == action
    boot_disk = run.one(GCP_VM).plain("bootDisk")
    assert boot_disk["autoDelete"] is True  # with the VM only: `pulumi destroy`


def test_gcp_outputs_where_the_vm_is_and_what_it_costs_stopped(required):
    run = run_program("gcp-t4", required("gcp-t4") | idle())
    vm = run.one(GCP_VM)
    assert run.outputs["cloud_vm"] == {
        "cloud": "gcp",
        "project": GCP_PROJECT,
        "zone": "us-central1-a",
        "name": f"{vm.name}-1a2b3c4",
    }
    assert run.outputs["stopped_hourly_cost_usd"] == GCP_T4_STOPPED
    assert {"cloud_vm", "stopped_hourly_cost_usd", "idle_stop_minutes"}.isdisjoint(run.secret_outputs)


def test_aws_stops_the_instance_when_it_powers_itself_off(required):
    run = run_program("aws-t4", required("aws-t4") | idle() | {"aws:region": "us-west-2"})
    vm = run.one(AWS_VM)
    assert vm.plain("instanceInitiatedShutdownBehavior") == "stop"
    assert vm.plain("rootBlockDevice")["deleteOnTermination"] is True  # gone with a termination only
    # The host counts requests itself: no CPU-idle alarm any more.
    assert not run.of_type(ALARM)
    assert run.outputs["cloud_vm"] == {
        "cloud": "aws",
        "region": "us-west-2",
        "instance_id": f"{vm.name}-id",
        "profile": "",
    }
    assert run.outputs["stopped_hourly_cost_usd"] == AWS_T4_STOPPED


def test_aws_wake_signs_in_with_the_stacks_profile(required):
    run = run_program("aws-t4", required("aws-t4") | idle() | {"aws:profile": "lab"})
    assert run.outputs["cloud_vm"]["profile"] == "lab"


def test_a_one_time_spot_instance_terminates_on_shutdown_so_aws_spot_refuses_idle_stop(required):
    run = run_program("aws-t4", required("aws-t4") | {"synthdet:spot": True})
    assert run.one(AWS_VM).plain("instanceInitiatedShutdownBehavior") == "terminate"
    with pytest.raises(ConfigError, match=r"(?s)idleStopMinutes.*spot.*terminates"):
        run_program("aws-t4", required("aws-t4") | {"synthdet:spot": True} | idle())


@pytest.mark.parametrize("stack", ["gcp-t4", "aws-t4"])
def test_fleets_refuse_idle_stop_and_say_they_scale_to_their_minimum(required, stack):
    fleet = {"synthdet:replicas": 2, "synthdet:torchVersion": "2.9.1"}
    with pytest.raises(ConfigError, match=r"(?s)fleet does not power off.*minimum.*synthdet:replicas"):
        run_program(stack, required(stack) | fleet | idle())


def test_the_end_of_up_says_when_the_host_stops_and_how_to_wake_it(required):
    run = run_program("gcp-t4", required("gcp-t4") | idle(45))
    (line,) = [line for line in run.logs if "powers itself off" in line]
    assert "after 45 minutes without a prediction request" in line
    assert "synthdet wake --stack gcp-t4" in line and "synthdet status --stack gcp-t4" in line
    assert "$0.027/h" in line  # GCP_T4_STOPPED, 0.0271


def test_an_existing_machine_powers_off_and_is_powered_on_by_hand(required):
    run = run_program("ssh", required("ssh") | idle(20))
    assert run.one(BOOTSTRAP_TYPE).plain("options")["idle_stop_minutes"] == 20
    assert "cloud_vm" not in run.outputs
    (line,) = [line for line in run.logs if "powers itself off" in line]
    assert "power the machine on again yourself" in line


def test_the_stack_files_suggest_thirty_minutes():
    from tests.infra.harness import STACKS_DIR

    for path in sorted(STACKS_DIR.glob("Pulumi.*.yaml")):
        assert "# synthdet:idleStopMinutes: 30" in path.read_text(), path.name
