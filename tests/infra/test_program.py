"""The Pulumi program's resource graph per stack file, under mocks.

Policy asserted here: the right GPU, maintenance policy, image and machine;
only SSH (from the configured CIDRs, never the world by default) and the
public port are open, never TorchServe's ports; the outputs exist and the
ones carrying secrets are secret; the bootstrap waits for the host.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError
from tests.infra.conftest import DEPLOYER_IP
from tests.infra.harness import (
    AWS_IP,
    BOOTSTRAP_TYPE,
    FAKE_AMI,
    FAKE_PRIVATE_KEY,
    FAKE_URL_SECRET,
    GCP_IP,
    ProgramRun,
    run_program,
    stack_names,
)

REQUIRED_OUTPUTS = {
    "endpoint",
    "ssh_command",
    "cert_sha256",
    "qr",
    "hourly_cost_usd",
}
SECRET_OUTPUTS = {"endpoint", "endpoints", "ssh_private_key", "qr"}
HOST_TYPES = {
    "gcp": "synthdet:index:GcpGpuHost",
    "aws": "synthdet:index:AwsGpuHost",
    "ssh": "synthdet:index:ExistingHost",
}
ANYWHERE = {"0.0.0.0/0", "::/0"}
# TorchServe's ports on a deployed host (HTTP inference, management, metrics; gRPC),
# restated here: the config must refuse exactly these as the public port.
HOST_TORCHSERVE_PORTS = (18080, 18081, 18082, 7070, 7071)


def test_the_expected_stacks_exist():
    assert {"gcp-t4", "aws-m60", "aws-t4", "ssh"} <= set(stack_names())


@pytest.fixture(params=stack_names())
def stack_run(request, required) -> tuple[str, ProgramRun]:
    stack = request.param
    return stack, run_program(stack, required(stack))


# ------------------------------------------------------------------ every stack


def test_outputs_present_and_secrets_marked(stack_run):
    _, run = stack_run
    assert set(run.outputs) >= REQUIRED_OUTPUTS
    assert run.secret_outputs >= SECRET_OUTPUTS
    assert run.outputs["endpoint"].startswith("https://")
    assert FAKE_URL_SECRET in run.outputs["endpoint"]
    # The QR encodes the secret URL: a secret output, and (showQr off by default) not logged.
    assert FAKE_URL_SECRET not in run.outputs["qr"]
    assert "\u2588" in run.outputs["qr"] or "\u2580" in run.outputs["qr"]
    assert not any("\u2580" in line or "\u2588" in line for line in run.logs)


def test_no_plain_output_carries_a_secret(stack_run):
    _, run = stack_run
    for name, value in run.outputs.items():
        if name in run.secret_outputs:
            continue
        text = str(value)
        assert FAKE_URL_SECRET not in text, name
        assert "PRIVATE KEY" not in text, name


def test_bootstrap_depends_on_the_host(stack_run):
    stack, run = stack_run
    boot = run.one(BOOTSTRAP_TYPE)
    deps = {run.by_urn(urn).type for urn in boot.dependencies}
    if stack == "ssh":
        # An existing host has no resources to wait for (depending on a component
        # means depending on its children); it is simply the bootstrap's target.
        assert boot.plain("host") == "192.0.2.50"
    else:
        cloud = stack.split("-")[0]
        instance = f"{cloud}:compute/instance:Instance" if cloud == "gcp" else "aws:ec2/instance:Instance"
        assert instance in deps
    if stack.startswith("aws"):
        # Not before the Elastic IP points at the instance.
        assert "aws:ec2/eipAssociation:EipAssociation" in deps


def test_bootstrap_inputs_secret_and_outputs_kept_secret(stack_run):
    _, run = stack_run
    boot = run.one(BOOTSTRAP_TYPE)
    assert boot.is_secret("private_key")
    assert boot.is_secret("url_secret")
    assert {"endpoint", "endpoints", "private_key", "url_secret"} <= set(boot.additional_secret_outputs)


def test_bootstrap_fingerprints_are_the_archive_keys(stack_run, checkpoint):
    from serving.archive import archive_key
    from serving.models import ModelSpec
    from serving.settings import ServingSettings

    _, run = stack_run
    prints = run.one(BOOTSTRAP_TYPE).plain("fingerprints")
    # One inputs hash per model: checkpoint, label map, handler code and settings (serving.archive).
    assert prints == {"synthdet": archive_key(ModelSpec("synthdet", checkpoint), ServingSettings())}


def test_one_host_component_and_children_parented(stack_run):
    stack, run = stack_run
    host = run.one(HOST_TYPES["ssh" if stack == "ssh" else stack.split("-")[0]])
    cloud_resources = [r for r in run.resources if r.type.split(":")[0] in {"gcp", "aws", "tls"}]
    assert all(r.parent == host.urn for r in cloud_resources)


# ------------------------------------------------------------------ network policy


def open_rules(run: ProgramRun) -> list[tuple[int, list[str]]]:
    """(port, CIDRs) for every ingress allow rule, whatever the cloud."""
    rules = []
    for fw in run.of_type("gcp:compute/firewall:Firewall"):
        assert fw.plain("direction") == "INGRESS"
        for allow in fw.plain("allows"):
            assert allow["protocol"] == "tcp"
            rules += [(int(p), fw.plain("sourceRanges")) for p in allow["ports"]]
    for sg in run.of_type("aws:ec2/securityGroup:SecurityGroup"):
        for rule in sg.plain("ingress"):
            assert rule["protocol"] == "tcp"
            assert rule["fromPort"] == rule["toPort"]
            cidrs = (rule.get("cidrBlocks") or []) + (rule.get("ipv6CidrBlocks") or [])
            rules.append((int(rule["fromPort"]), cidrs))
    return rules


@pytest.mark.parametrize("stack", ["gcp-t4", "aws-m60", "aws-t4"])
def test_only_ssh_from_deployer_and_https_from_anywhere(stack, required):
    run = run_program(stack, required(stack))
    rules = open_rules(run)
    assert sorted(port for port, _ in rules) == [22, 443]
    for port, cidrs in rules:
        assert port not in HOST_TORCHSERVE_PORTS
        if port == 22:
            assert cidrs == [f"{DEPLOYER_IP}/32"]
            assert not set(cidrs) & ANYWHERE
        else:
            assert cidrs == ["0.0.0.0/0"]


@pytest.mark.parametrize("stack", ["gcp-t4", "aws-t4"])
def test_configured_ports_and_cidrs_are_used(stack, required):
    run = run_program(
        stack,
        required(stack)
        | {
            "synthdet:publicPort": 8443,
            "synthdet:acme": False,  # ACME validates on 443 only
            "synthdet:sshAllowedCidrs": ["10.1.0.0/16", "2001:db8::/32"],
            "synthdet:endpointCidrs": ["192.0.2.0/24"],
        },
    )
    rules = dict(open_rules(run))
    assert rules == {22: ["10.1.0.0/16", "2001:db8::/32"], 8443: ["192.0.2.0/24"]}
    assert ":8443/" in run.outputs["endpoint"]


def test_ssh_from_anywhere_only_when_asked_and_then_warned(required):
    run = run_program("aws-t4", required("aws-t4") | {"synthdet:sshAllowedCidrs": ["0.0.0.0/0"]})
    assert dict(open_rules(run))[22] == ["0.0.0.0/0"]
    assert any("whole internet" in line for line in run.logs)


@pytest.mark.parametrize("port", [*HOST_TORCHSERVE_PORTS, 22])
def test_torchserve_ports_cannot_be_the_public_port(port, required):
    with pytest.raises(ConfigError, match=rf"publicPort: .*port {port} is reserved"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:publicPort": port})


@pytest.mark.parametrize("port", [8080, 8081, 8082])
def test_ports_torchserve_does_not_use_on_the_host_are_fine(port, required):
    # TorchServe's upstream defaults, which our hosts move away from: nothing clashes.
    run = run_program("gcp-t4", required("gcp-t4") | {"synthdet:publicPort": port, "synthdet:acme": False})
    assert port in dict(open_rules(run))
    assert f":{port}/" in run.outputs["endpoint"]


def test_gcp_uses_its_own_network_not_default(required):
    run = run_program("gcp-t4", required("gcp-t4"))
    network = run.one("gcp:compute/network:Network")
    instance = run.one("gcp:compute/instance:Instance")
    assert instance.plain("networkInterfaces")[0]["network"] == f"{network.name}-id"
    for fw in run.of_type("gcp:compute/firewall:Firewall"):
        assert fw.plain("network") == f"{network.name}-id"
        assert fw.plain("targetTags") == instance.plain("tags")


# ------------------------------------------------------------------ GCP T4


def test_gcp_t4_instance(required):
    run = run_program("gcp-t4", required("gcp-t4"))
    vm = run.one("gcp:compute/instance:Instance")
    assert vm.plain("machineType") == "n1-standard-4"
    assert vm.plain("zone") == "us-central1-a"
    assert vm.plain("guestAccelerators") == [{"type": "nvidia-tesla-t4", "count": 1}]
    scheduling = vm.plain("scheduling")
    assert scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling["provisioningModel"] == "STANDARD"
    assert scheduling["automaticRestart"] is True
    disk = vm.plain("bootDisk")["initializeParams"]
    assert disk["image"] == (
        "projects/deeplearning-platform-release/global/images/family/pytorch-2-9-cu129-ubuntu-2204-nvidia-580"
    )
    assert disk["size"] == 125
    meta = vm.plain("metadata")
    assert meta["ssh-keys"].startswith("synthdet:ssh-ed25519 ")
    assert meta["enable-oslogin"] == "FALSE"
    # Only the stack's key logs in, not project-wide keys.
    assert meta["block-project-ssh-keys"] == "TRUE"
    # The static IP is the VM's address and the bootstrap's target.
    address = run.one("gcp:compute/address:Address")
    assert address.plain("region") == "us-central1"
    assert vm.plain("networkInterfaces")[0]["accessConfigs"][0]["natIp"] == GCP_IP
    assert run.one(BOOTSTRAP_TYPE).plain("host") == GCP_IP
    assert (
        "gcp:compute/getImage:getImage",
        {
            "family": "pytorch-2-9-cu129-ubuntu-2204-nvidia-580",
            "project": "deeplearning-platform-release",
        },
    ) in run.calls
    assert run.outputs["hourly_cost_usd"] == pytest.approx(
        0.189999 + 0.35 + 125 * 0.10 / 730 + 0.005, abs=1e-3
    )


def test_gcp_spot_and_max_run(required):
    run = run_program(
        "gcp-t4",
        required("gcp-t4")
        | {
            "synthdet:spot": True,
            "synthdet:maxRunHours": 8,
            "synthdet:gpuCount": 2,
            "gcp:zone": "europe-west4-b",
        },
    )
    vm = run.one("gcp:compute/instance:Instance")
    scheduling = vm.plain("scheduling")
    assert scheduling["provisioningModel"] == "SPOT"
    assert scheduling["preemptible"] is True
    assert scheduling["automaticRestart"] is False
    assert scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling["instanceTerminationAction"] == "STOP"
    assert scheduling["maxRunDuration"] == {"seconds": 8 * 3600}
    assert vm.plain("guestAccelerators")[0]["count"] == 2
    assert run.one("gcp:compute/address:Address").plain("region") == "europe-west4"


def test_gcp_image_override_skips_the_lookup(required):
    run = run_program(
        "gcp-t4", required("gcp-t4") | {"synthdet:image": "projects/my-proj/global/images/my-image"}
    )
    vm = run.one("gcp:compute/instance:Instance")
    assert vm.plain("bootDisk")["initializeParams"]["image"] == "projects/my-proj/global/images/my-image"
    assert not run.calls


# ------------------------------------------------------------------ AWS


def aws_instance(run: ProgramRun) -> dict[str, Any]:
    return run.one("aws:ec2/instance:Instance").inputs


def ami_call(run: ProgramRun) -> dict[str, Any]:
    calls = [args for token, args in run.calls if token == "aws:ec2/getAmi:getAmi"]
    assert len(calls) == 1
    return calls[0]


def test_aws_m60_instance_and_pinned_ami_line(required):
    run = run_program("aws-m60", required("aws-m60"))
    vm = run.one("aws:ec2/instance:Instance")
    assert vm.plain("instanceType") == "g3s.xlarge"
    assert vm.plain("ami") == FAKE_AMI
    call = ami_call(run)
    assert call["owners"] == ["amazon"]
    assert call["mostRecent"] is True
    assert call["includeDeprecated"] is True  # the line is frozen and deprecated
    filters = {f["name"]: f["values"] for f in call["filters"]}
    assert filters["name"] == ["Deep Learning Base Proprietary Nvidia Driver GPU AMI (Ubuntu 20.04) *"]
    assert filters["architecture"] == ["x86_64"]
    assert run.one(BOOTSTRAP_TYPE).plain("user") == "ubuntu"
    assert run.outputs["hourly_cost_usd"] == pytest.approx(0.75 + 125 * 0.08 / 730 + 0.005, abs=1e-3)


def test_aws_t4_instance_and_current_ami_line(required):
    run = run_program("aws-t4", required("aws-t4"))
    vm = run.one("aws:ec2/instance:Instance")
    assert vm.plain("instanceType") == "g4dn.xlarge"
    filters = {f["name"]: f["values"] for f in ami_call(run)["filters"]}
    assert filters["name"] == ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"]
    assert ami_call(run)["includeDeprecated"] is False


@pytest.mark.parametrize("stack", ["aws-m60", "aws-t4"])
def test_aws_shape_key_pair_security_group_elastic_ip(stack, required):
    run = run_program(stack, required(stack))
    vm = run.one("aws:ec2/instance:Instance")
    key = run.one("aws:ec2/keyPair:KeyPair")
    sg = run.one("aws:ec2/securityGroup:SecurityGroup")
    assert vm.plain("keyName") == f"{key.name}-generated"
    assert vm.plain("vpcSecurityGroupIds") == [f"{sg.name}-id"]
    assert key.plain("publicKey").startswith("ssh-ed25519 ")
    assoc = run.one("aws:ec2/eipAssociation:EipAssociation")
    assert assoc.plain("instanceId") == f"{vm.name}-id"
    assert assoc.plain("allocationId") == "eipalloc-1"
    assert run.one(BOOTSTRAP_TYPE).plain("host") == AWS_IP
    root = vm.plain("rootBlockDevice")
    assert root["volumeSize"] == 125 and root["volumeType"] == "gp3" and root["encrypted"]
    assert vm.plain("metadataOptions")["httpTokens"] == "required"
    assert vm.plain("instanceMarketOptions") is None


def test_aws_spot_is_a_one_time_request(required):
    run = run_program("aws-t4", required("aws-t4") | {"synthdet:spot": True, "aws:region": "us-west-2"})
    market = run.one("aws:ec2/instance:Instance").plain("instanceMarketOptions")
    assert market["marketType"] == "spot"
    # One-time, never persistent: a persistent request can outlive `pulumi destroy` and keep
    # launching instances nobody manages (terraform-provider-aws issue 38142).
    assert market["spotOptions"] == {
        "instanceInterruptionBehavior": "terminate",
        "spotInstanceType": "one-time",
    }
    assert not run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")


def test_aws_spot_with_idle_stop_is_refused_before_anything_bills(required):
    # AWS refuses to stop an instance of a one-time spot request: the alarm would fail and
    # the idle instance keep billing.
    with pytest.raises(ConfigError, match=r"(?s)idleStopMinutes.*spot.*one-time"):
        run_program("aws-t4", required("aws-t4") | {"synthdet:spot": True, "synthdet:idleStopMinutes": 30})
    run_program("gcp-t4", required("gcp-t4") | {"synthdet:spot": True, "synthdet:maxRunHours": 4})


def test_no_idle_alarm_by_default(required):
    run = run_program("aws-t4", required("aws-t4"))
    assert not run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")


@pytest.mark.parametrize(
    ("stack", "ip", "vm_type"),
    [
        ("gcp-t4", GCP_IP, "gcp:compute/instance:Instance"),
        ("aws-t4", AWS_IP, "aws:ec2/instance:Instance"),
        ("aws-m60", AWS_IP, "aws:ec2/instance:Instance"),
    ],
)
def test_cloud_host_outputs_its_static_ip_and_instance(stack, ip, vm_type, required):
    run = run_program(stack, required(stack))
    vm = run.one(vm_type)
    assert run.outputs["public_ip"] == ip
    assert run.outputs["instance_id"] == f"{vm.name}-id"
    assert "address" not in run.outputs and "group_id" not in run.outputs
    boot = run.one(BOOTSTRAP_TYPE)
    assert boot.plain("host") == ip
    assert boot.plain("machine_id") == f"{vm.name}-id"  # a new VM is another machine


# ------------------------------------------------------------------ ssh stack and keys


def test_ssh_stack_has_no_cloud_resources(required, key_file):
    run = run_program("ssh", required("ssh"))
    assert {t.split(":")[0] for t in run.types()} <= {"synthdet", "random", "pulumi-python"}
    boot = run.one(BOOTSTRAP_TYPE)
    assert boot.plain("host") == "192.0.2.50"
    assert boot.plain("user") == "root"
    assert boot.plain("private_key") == key_file.read_text()
    assert run.outputs["hourly_cost_usd"] is None
    assert run.outputs["ssh_command"] == f"ssh -i {key_file} root@192.0.2.50"
    # The configured name or address (not necessarily public, nor an IP) and no cloud id.
    assert run.outputs["address"] == "192.0.2.50"
    assert not {"public_ip", "instance_id"} & set(run.outputs)
    # The login identifies the machine, as it did when this was called instance_id
    # (same value: an existing stack is not redeployed by the rename).
    assert boot.plain("machine_id") == "root@192.0.2.50:22"
    assert "instance_id" not in boot.inputs


def test_ssh_stack_needs_host_and_key(checkpoint):
    with pytest.raises(ConfigError, match="sshHost"):
        run_program("ssh", {"synthdet:model": str(checkpoint)})


def test_user_key_file_replaces_the_generated_key(required, key_file):
    run = run_program("gcp-t4", required("gcp-t4") | {"synthdet:sshPrivateKeyPath": str(key_file)})
    assert not run.of_type("tls:index/privateKey:PrivateKey")
    assert run.one(BOOTSTRAP_TYPE).plain("private_key") == key_file.read_text()
    assert run.outputs["ssh_command"].startswith(f"ssh -i {key_file} synthdet@")


def test_generated_key_is_secret_everywhere_and_written_0600_outside_the_checkout(required, config_dir):
    import stat

    from infra.config import PROJECT_DIR

    run = run_program("gcp-t4", required("gcp-t4"))
    assert run.one(BOOTSTRAP_TYPE).plain("private_key") == FAKE_PRIVATE_KEY
    assert "ssh_private_key" in run.secret_outputs
    (key,) = config_dir.glob("keys/*/id_ed25519")
    assert key.read_text() == FAKE_PRIVATE_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert PROJECT_DIR not in key.parents
    assert run.outputs["ssh_command"] == f"ssh -i {key} synthdet@{GCP_IP}"


# ------------------------------------------------------------------ config errors and options


def test_missing_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="synthdet:model"):
        run_program("gcp-t4")


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="synthdet:model.*does not exist"):
        run_program("gcp-t4", {"synthdet:model": str(tmp_path / "nope.pth")})


def test_unknown_gpu_for_cloud(required):
    with pytest.raises(ValueError, match="m60"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:gpu": "m60"})


def test_serving_settings_pass_through_and_change_the_fingerprint(required):
    base = run_program("aws-t4", required("aws-t4"))
    tuned = run_program(
        "aws-t4", required("aws-t4") | {"synthdet:serving": {"score_threshold": 0.7, "precision": "fp16"}}
    )
    boot = tuned.one(BOOTSTRAP_TYPE)
    assert boot.plain("options")["serving"]["score_threshold"] == 0.7
    assert boot.plain("options")["serving"]["precision"] == "fp16"
    before = base.one(BOOTSTRAP_TYPE).plain("fingerprints")
    assert before["synthdet"] != boot.plain("fingerprints")["synthdet"]


def test_bad_serving_setting_is_refused(required):
    with pytest.raises(ConfigError, match="serving"):
        run_program("aws-t4", required("aws-t4") | {"synthdet:serving": {"no_such_knob": 1}})


def test_extra_models_are_deployed_and_fingerprinted(required, tmp_path):
    other = tmp_path / "other.pth"
    other.write_bytes(b"other")
    run = run_program("gcp-t4", required("gcp-t4") | {"synthdet:extraModels": [f"cereal={other}"]})
    boot = run.one(BOOTSTRAP_TYPE)
    assert [m["name"] for m in boot.plain("models")] == ["synthdet", "cereal"]
    assert set(boot.plain("fingerprints")) == {"synthdet", "cereal"}


def test_the_qr_goes_to_the_update_log_only_when_asked(required):
    assert not any("Scan this" in line for line in run_program("gcp-t4", required("gcp-t4")).logs)
    run = run_program("gcp-t4", required("gcp-t4") | {"synthdet:showQr": True})
    assert any("Scan this with the SynthDet Viewer" in line for line in run.logs)
    assert "qr" in run.secret_outputs  # still a secret output


def test_service_account_name_is_never_the_login(required):
    from bootstrap.steps.base import SERVICE_USER

    run = run_program("gcp-t4", required("gcp-t4"))
    assert run.one(BOOTSTRAP_TYPE).plain("user") != SERVICE_USER
    with pytest.raises(ConfigError, match="sshUser"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:sshUser": SERVICE_USER})


def test_pip_and_torch_options_reach_the_bootstrap(required):
    run = run_program(
        "ssh",
        required("ssh")
        | {
            "synthdet:pipFindLinks": "http://10.203.1.1:8000/wheels/",
            "synthdet:pipTrustedHosts": ["10.203.1.1"],
            "synthdet:torchVersion": "2.8.0",
        },
    )
    options = run.one(BOOTSTRAP_TYPE).plain("options")
    assert options["pip"].get("index_url") is None
    assert options["pip"]["find_links"] == "http://10.203.1.1:8000/wheels/"
    assert options["pip"]["trusted_hosts"] == ["10.203.1.1"]
    assert options["torch_version"] == "2.8.0"
