"""The CPU stacks (gcp-cpu, aws-cpu): no GPU, a plain OS image, CPU torch, under mocks.

Policy asserted here: no accelerator and no GPU instance type, a CPU VM that
live-migrates on GCP, the plain Debian 12 image looked up from its publisher,
the disk type the machine series accepts, only SSH (from the deployer) and the
HTTPS port open, the outputs and their secrecy, and the hourly cost from the
price table. Nonsense combinations are refused before anything is created.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from infra.config import ConfigError
from infra.images import check_choice, select_image
from infra.pricing import aws_hourly, gcp_hourly, load_prices
from tests.infra.conftest import DEPLOYER_IP
from tests.infra.harness import (
    AWS_IP,
    BOOTSTRAP_TYPE,
    FAKE_AMI,
    FAKE_URL_SECRET,
    GCP_IP,
    ProgramRun,
    run_program,
    stack_names,
)

# Restated from the price table on purpose (infra/prices.yaml): a changed price must
# change this test too.
C3_STANDARD_8_US_CENTRAL1 = 0.403216
C7I_2XLARGE_US_EAST_1 = 0.357
PD_BALANCED_GB_MONTH = 0.10
GP3_GB_MONTH = 0.08
STATIC_IP_HOUR = 0.005
HOURS_PER_MONTH = 730
DEBIAN_AMI_OWNER = "136693071363"  # the Debian cloud team's AWS account


def ingress(run: ProgramRun) -> dict[int, list[str]]:
    """port -> CIDRs of every ingress allow rule (GCP firewall rules, AWS security groups)."""
    rules: dict[int, list[str]] = {}
    for fw in run.of_type("gcp:compute/firewall:Firewall"):
        for allow in fw.plain("allows"):
            assert allow["protocol"] == "tcp"
            for port in allow["ports"]:
                rules[int(port)] = fw.plain("sourceRanges")
    for sg in run.of_type("aws:ec2/securityGroup:SecurityGroup"):
        for rule in sg.plain("ingress"):
            cidrs = (rule.get("cidrBlocks") or []) + (rule.get("ipv6CidrBlocks") or [])
            rules[int(rule["fromPort"])] = cidrs
    return rules


def calls(run: ProgramRun, token: str) -> list[dict[str, Any]]:
    return [args for name, args in run.calls if name == token]


def test_both_cpu_stacks_are_shipped():
    assert {"gcp-cpu", "aws-cpu"} <= set(stack_names())


# ------------------------------------------------------------------ GCP


@pytest.fixture
def gcp_run(required) -> ProgramRun:
    return run_program("gcp-cpu", required("gcp-cpu"))


def test_gcp_cpu_vm_has_no_accelerator_and_live_migrates(gcp_run):
    vm = gcp_run.one("gcp:compute/instance:Instance")
    assert vm.plain("machineType") == "c3-standard-8"
    assert vm.plain("zone") == "us-central1-a"
    assert not vm.plain("guestAccelerators")
    scheduling = vm.plain("scheduling")
    # No GPU: maintenance moves the VM live instead of stopping it.
    assert scheduling["onHostMaintenance"] == "MIGRATE"
    assert scheduling["automaticRestart"] is True
    assert scheduling["provisioningModel"] == "STANDARD"
    meta = vm.plain("metadata")
    assert "install-nvidia-driver" not in meta
    assert meta["ssh-keys"].startswith("synthdet:ssh-ed25519 ")
    assert meta["block-project-ssh-keys"] == "TRUE"
    assert meta["enable-oslogin"] == "FALSE"
    # C3 runs on Titanium hosts: gVNIC is its only network interface.
    assert vm.plain("networkInterfaces")[0]["nicType"] == "GVNIC"
    assert vm.plain("networkInterfaces")[0]["accessConfigs"][0]["natIp"] == GCP_IP


def test_gcp_cpu_boots_plain_debian_on_pd_balanced(gcp_run):
    disk = gcp_run.one("gcp:compute/instance:Instance").plain("bootDisk")["initializeParams"]
    assert disk["image"] == "projects/debian-cloud/global/images/family/debian-12"
    assert disk["type"] == "pd-balanced"  # C3 accepts Persistent Disk
    assert disk["size"] == 30
    assert calls(gcp_run, "gcp:compute/getImage:getImage") == [
        {"family": "debian-12", "project": "debian-cloud"}
    ]


def test_gcp_cpu_opens_ssh_to_the_deployer_and_https_to_everyone(gcp_run):
    assert ingress(gcp_run) == {22: [f"{DEPLOYER_IP}/32"], 443: ["0.0.0.0/0"]}


def test_gcp_cpu_outputs_secrets_and_cost(gcp_run):
    outputs = gcp_run.outputs
    assert {"endpoint", "endpoints", "qr", "ssh_private_key"} <= gcp_run.secret_outputs
    assert outputs["endpoint"] == f"https://{GCP_IP}:443/{FAKE_URL_SECRET}/predictions/synthdet"
    assert outputs["public_ip"] == GCP_IP
    assert outputs["ssh_command"].endswith(f"synthdet@{GCP_IP}")
    assert outputs["hourly_cost_usd"] == pytest.approx(
        C3_STANDARD_8_US_CENTRAL1 + 30 * PD_BALANCED_GB_MONTH / HOURS_PER_MONTH + STATIC_IP_HOUR, abs=1e-4
    )
    boot = gcp_run.one(BOOTSTRAP_TYPE)
    assert boot.plain("host") == GCP_IP
    assert boot.plain("user") == "synthdet"


def test_gcp_cpu_spot_terminates_on_maintenance(required):
    # Compute Engine does not live-migrate spot VMs: they must TERMINATE.
    run = run_program("gcp-cpu", required("gcp-cpu") | {"synthdet:spot": True})
    scheduling = run.one("gcp:compute/instance:Instance").plain("scheduling")
    assert scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling["provisioningModel"] == "SPOT"
    assert scheduling["automaticRestart"] is False


def test_gcp_c4_boots_from_hyperdisk_and_says_its_price_is_unknown(required):
    run = run_program("gcp-cpu", required("gcp-cpu") | {"synthdet:machineType": "c4-standard-8"})
    vm = run.one("gcp:compute/instance:Instance")
    assert vm.plain("machineType") == "c4-standard-8"
    # C4 takes no Persistent Disk: a pd-balanced boot disk would be refused at create time.
    assert vm.plain("bootDisk")["initializeParams"]["type"] == "hyperdisk-balanced"
    assert vm.plain("networkInterfaces")[0]["nicType"] == "GVNIC"
    # Not in the price table: no number rather than a wrong one, and a warning says why.
    assert run.outputs["hourly_cost_usd"] is None
    assert any("c4-standard-8" in line and "prices.yaml" in line for line in run.logs)


def test_gcp_gpu_host_keeps_its_gpu_settings(required):
    # The GPU stack is unchanged by the CPU one: accelerator, TERMINATE, driver at first boot.
    vm = run_program("gcp-t4", required("gcp-t4")).one("gcp:compute/instance:Instance")
    assert vm.plain("guestAccelerators") == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert vm.plain("scheduling")["onHostMaintenance"] == "TERMINATE"
    assert vm.plain("metadata")["install-nvidia-driver"] == "True"
    assert vm.plain("bootDisk")["initializeParams"]["type"] == "pd-balanced"
    assert "nicType" not in vm.plain("networkInterfaces")[0]


# ------------------------------------------------------------------ AWS


@pytest.fixture
def aws_run(required) -> ProgramRun:
    return run_program("aws-cpu", required("aws-cpu"))


def test_aws_cpu_instance_is_a_c7i_from_debians_own_ami(aws_run):
    vm = aws_run.one("aws:ec2/instance:Instance")
    assert vm.plain("instanceType") == "c7i.2xlarge"
    assert vm.plain("ami") == FAKE_AMI
    (call,) = calls(aws_run, "aws:ec2/getAmi:getAmi")
    assert call["owners"] == [DEBIAN_AMI_OWNER]
    assert call["mostRecent"] is True
    assert call["includeDeprecated"] is False
    filters = {f["name"]: f["values"] for f in call["filters"]}
    assert filters == {
        "name": ["debian-12-amd64-*"],
        "architecture": ["x86_64"],
        "state": ["available"],
    }
    root = vm.plain("rootBlockDevice")
    assert root["volumeSize"] == 30 and root["volumeType"] == "gp3" and root["encrypted"]
    assert vm.plain("instanceMarketOptions") is None


def test_aws_cpu_opens_ssh_to_the_deployer_and_https_to_everyone(aws_run):
    assert ingress(aws_run) == {22: [f"{DEPLOYER_IP}/32"], 443: ["0.0.0.0/0"]}


def test_aws_cpu_outputs_secrets_cost_and_login(aws_run):
    outputs = aws_run.outputs
    assert {"endpoint", "endpoints", "qr", "ssh_private_key"} <= aws_run.secret_outputs
    assert outputs["endpoint"] == f"https://{AWS_IP}:443/{FAKE_URL_SECRET}/predictions/synthdet"
    assert outputs["public_ip"] == AWS_IP
    assert outputs["hourly_cost_usd"] == pytest.approx(
        C7I_2XLARGE_US_EAST_1 + 30 * GP3_GB_MONTH / HOURS_PER_MONTH + STATIC_IP_HOUR, abs=1e-4
    )
    boot = aws_run.one(BOOTSTRAP_TYPE)
    assert boot.plain("host") == AWS_IP
    assert boot.plain("user") == "admin"  # Debian's AMIs log in as admin, not ubuntu


# ------------------------------------------------------------------ refused before anything bills


@pytest.mark.parametrize(
    ("stack", "overrides", "says"),
    [
        ("gcp-cpu", {"synthdet:gpuCount": 2}, r"gpuCount 2 with synthdet:gpu 'none'"),
        ("gcp-cpu", {"synthdet:machineType": "a2-highgpu-1g"}, r"a2-highgpu-1g comes with GPUs"),
        ("gcp-cpu", {"synthdet:machineType": "g2-standard-4"}, r"g2-standard-4 comes with GPUs"),
        ("aws-cpu", {"synthdet:machineType": "g4dn.xlarge"}, r"g4dn.xlarge comes with GPUs"),
        ("aws-cpu", {"synthdet:machineType": "p3.2xlarge"}, r"p3.2xlarge comes with GPUs"),
        ("gcp-cpu", {"synthdet:replicas": 2}, r"replicas/maxReplicas with synthdet:gpu 'none'"),
        ("aws-cpu", {"synthdet:maxReplicas": 3}, r"replicas/maxReplicas with synthdet:gpu 'none'"),
        ("gcp-t4", {"synthdet:gpu": "m60"}, r"gpu 'm60' is not offered on gcp: use t4, or 'none'"),
        ("aws-t4", {"synthdet:gpu": "cpu"}, r"gpu 'cpu' is not offered on aws: use m60 or t4, or 'none'"),
    ],
)
def test_nonsense_combinations_are_refused(stack, overrides, says, required):
    with pytest.raises(ConfigError, match=says):
        run_program(stack, required(stack) | overrides)


def test_cpu_machine_types_on_request_are_fine(required):
    run = run_program("aws-cpu", required("aws-cpu") | {"synthdet:machineType": "m7i.xlarge"})
    assert run.one("aws:ec2/instance:Instance").plain("instanceType") == "m7i.xlarge"


# ------------------------------------------------------------------ the image rows and the bootstrap


def test_cpu_image_rows_are_the_plain_os():
    gcp = select_image("gcp", "none")
    assert (gcp.gcp_project, gcp.gcp_family, gcp.ssh_user) == ("debian-cloud", "debian-12", "synthdet")
    aws = select_image("aws", "none")
    assert (aws.ami_owners, aws.ami_name, aws.ssh_user) == ((DEBIAN_AMI_OWNER,), "debian-12-amd64-*", "admin")
    for row in (gcp, aws):
        assert check_choice(row) == []
        assert not row.carries_torch and row.torch_build == "cpu"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"torch_build": "cu130"}, "cpu build"),
        ({"carries_torch": True}, "no NVIDIA driver and no torch"),
        ({"driver_branch": 580}, "no NVIDIA driver"),
        ({"gcp_family": None}, "needs a project and a family"),
    ],
)
def test_broken_cpu_rows_are_caught(change, problem):
    broken = dataclasses.replace(select_image("gcp", "none"), **change)
    assert any(problem in p for p in check_choice(broken))


def test_the_bootstrap_installs_the_cpu_wheel_on_a_plain_image():
    """A host without GPU and without torch: torch_select names the CPU build, and the venv step
    installs it from PyTorch's CPU index (a few hundred MB, not the CUDA build's gigabytes)."""
    from bootstrap.api import DeployOptions
    from bootstrap.steps.venv import torch_install_args
    from bootstrap.torch_select import select_torch

    choice = select_torch(None, None)
    assert choice.device == "cpu" and not choice.reuse_image
    assert choice.build is not None and choice.build.flavor == select_image("aws", "none").torch_build
    args = torch_install_args(DeployOptions(), choice)
    assert args[args.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    pinned = torch_install_args(DeployOptions(torch_version="2.9.1"), choice)
    assert {"torch==2.9.1", "torchvision==0.24.1"} <= set(pinned)


# ------------------------------------------------------------------ prices


def test_cpu_prices_are_in_the_table_with_a_source_and_a_date():
    table = load_prices()
    c3 = table.gcp.machine["c3-standard-8"]["us-central1"]
    assert c3.usd == C3_STANDARD_8_US_CENTRAL1
    assert c3.as_of == datetime.date(2025, 3, 6)  # read on another day than the table's
    assert c3.source.startswith("https://cloud.google.com/compute/vm-instance-pricing")
    c7i = table.aws.instance["c7i.2xlarge"]["us-east-1"]
    assert c7i.usd == C7I_2XLARGE_US_EAST_1
    assert c7i.source == "https://aws.amazon.com/ec2/pricing/on-demand/"


def test_a_cpu_estimate_has_no_gpu_line():
    est = gcp_hourly("us-central1", "c3-standard-8", None, 1, 30)
    assert est.complete
    assert [label for label, _ in est.lines] == [
        "c3-standard-8 in us-central1",
        "30 GB pd-balanced",
        "static IP",
    ]
    # Cheaper than either GPU stack per hour (what it buys is a slower frame).
    assert est.rounded() < gcp_hourly("us-central1", "n1-standard-4", "nvidia-tesla-t4", 1, 125).rounded()
    assert (
        aws_hourly("us-east-1", "c7i.2xlarge", 30).rounded()
        < aws_hourly("us-east-1", "g4dn.xlarge", 125).rounded()
    )


@pytest.mark.parametrize(
    ("stack", "estimate"),
    [
        ("gcp-cpu", lambda disk: gcp_hourly("us-central1", "c3-standard-8", None, 1, disk)),
        ("aws-cpu", lambda disk: aws_hourly("us-east-1", "c7i.2xlarge", disk)),
    ],
)
def test_the_docs_quote_the_hourly_cost_the_stack_outputs(stack, estimate):
    from tests.infra.harness import REPO, stack_config

    usd = estimate(int(stack_config(stack)["synthdet:diskSizeGb"])).rounded()
    assert f"| `{stack}` |" in (REPO / "docs" / "pulumi.md").read_text()
    assert f"{usd:.2f} USD/h" in (REPO / "docs" / "pulumi.md").read_text()
    assert f"about ${usd:.2f}/h" in (REPO / "README.md").read_text()
