"""`pulumi up` on a stack whose VM is stopped (idle stop): the bootstrap says so at once.

The bootstrap resource asks the cloud's API for the VM's state (infra/power.py)
before it connects: a stopped VM fails the create/update at once with one line
naming `synthdet wake`, instead of SSH waiting its whole timeout and blaming the
firewall. The clouds are the fake API servers (tests/support/fake_gcp_api.py,
fake_aws_api.py) over real HTTP; the "host" is a loopback port that would take
SSH connections into its backlog and never answer, so a connection attempt shows.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bootstrap.deploy
from bootstrap.api import DeployOptions
from infra.bootstrap_resource import BootstrapProvider, VmNotRunning, vm_not_running
from serving.models import ModelSpec
from tests.support.cloud_check import faked_aws, faked_gcp
from tests.support.fake_aws_api import AwsWorld
from tests.support.fake_gcp_api import GcpWorld
from tests.support.keys import openssh_private_key
from tests.support.pulumi_log import pulumi_log_on_stderr  # noqa: F401 - autouse fixture

STACK = "my-gcp-t4"
GCP_VM = {"cloud": "gcp", "project": "demo-project", "zone": "us-central1-b", "name": "synthdet-vm-1a2b3c4"}
AWS_ID = "i-0123456789abcdef0"
AWS_VM = {"cloud": "aws", "region": "us-east-1", "instance_id": AWS_ID, "profile": ""}


@pytest.fixture
def ssh_port() -> Iterator[socket.socket]:
    """Listens but never accepts: `connected(server)` tells whether anybody tried."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def connected(server: socket.socket) -> bool:
    try:
        client, _ = server.accept()
    except BlockingIOError:
        return False
    client.close()
    return True


def props(
    server: socket.socket, tmp_path: Path, checkpoint: Path, vm: dict[str, str] | None
) -> dict[str, Any]:
    options = DeployOptions(ssh_wait_timeout_s=600.0).to_dict()
    return {
        "host": "127.0.0.1",
        "port": server.getsockname()[1],
        "user": "synthdet",
        "private_key": openssh_private_key(),
        "machine_id": "projects/demo-project/zones/us-central1-b/instances/synthdet-vm-1a2b3c4",
        "known_hosts": str(tmp_path / "kh"),
        "ssh_hint": "the firewall admits SSH from 198.51.100.7/32 only",
        "cloud_vm": vm,
        "stack": STACK,
        "models": [ModelSpec.parse(str(checkpoint)).to_dict()],
        "options": {k: v for k, v in options.items() if k != "url_secret"},
        "url_secret": "UrlSecretUrlSecretUrlSecret12345",
    }


def test_an_update_on_a_stopped_gcp_vm_fails_at_once_with_the_wake_command(
    monkeypatch: pytest.MonkeyPatch, ssh_port: socket.socket, tmp_path: Path, unity_checkpoint: Path
) -> None:
    world = GcpWorld(instances={("us-central1-b", "synthdet-vm-1a2b3c4"): "TERMINATED"})
    with faked_gcp(monkeypatch, world):
        new = props(ssh_port, tmp_path, unity_checkpoint, GCP_VM)
        with pytest.raises(VmNotRunning) as raised:
            BootstrapProvider().update("id", new, new)
    assert str(raised.value) == (
        f"the VM is stopped (idle stop?): `synthdet wake --stack {STACK}`, then rerun "
        "(gcp us-central1-b synthdet-vm-1a2b3c4: TERMINATED)"
    )
    assert ("GET", "/compute/v1/projects/demo-project/zones/us-central1-b/instances/synthdet-vm-1a2b3c4") in (
        world.requests
    )
    assert not connected(ssh_port)  # no SSH attempt, hence no 600 s wait and no firewall hint


def test_a_create_on_a_stopped_aws_instance_fails_at_once_too(
    monkeypatch: pytest.MonkeyPatch, ssh_port: socket.socket, tmp_path: Path, unity_checkpoint: Path
) -> None:
    world = AwsWorld(instances={AWS_ID: ("stopped", "us-east-1a")})
    with faked_aws(monkeypatch, world), pytest.raises(VmNotRunning) as raised:
        BootstrapProvider().create(props(ssh_port, tmp_path, unity_checkpoint, AWS_VM))
    assert str(raised.value).startswith(f"the VM is stopped (idle stop?): `synthdet wake --stack {STACK}`")
    assert "DescribeInstances" in world.requests and not connected(ssh_port)


@pytest.mark.parametrize(("status", "said"), [("RUNNING", None), ("STAGING", None), ("STOPPING", "stopping")])
def test_only_a_vm_that_cannot_answer_stops_the_deploy(
    monkeypatch: pytest.MonkeyPatch,
    ssh_port: socket.socket,
    tmp_path: Path,
    unity_checkpoint: Path,
    status: str,
    said: str | None,
) -> None:
    world = GcpWorld(instances={("us-central1-b", "synthdet-vm-1a2b3c4"): status})
    with faked_gcp(monkeypatch, world):
        line = vm_not_running(props(ssh_port, tmp_path, unity_checkpoint, GCP_VM))
    assert (line is None) == (said is None)
    if said:
        assert line is not None and line.startswith(f"the VM is {said} (idle stop?)")


def test_a_deleted_vm_is_named_gone_with_the_refresh_that_replaces_it(
    monkeypatch: pytest.MonkeyPatch, ssh_port: socket.socket, tmp_path: Path, unity_checkpoint: Path
) -> None:
    with faked_gcp(monkeypatch, GcpWorld()):
        line = vm_not_running(props(ssh_port, tmp_path, unity_checkpoint, GCP_VM))
    assert line == (
        "the VM is gone (gcp us-central1-b synthdet-vm-1a2b3c4): "
        f"`pulumi up --refresh --stack {STACK}` makes a new one"
    )


def test_an_existing_machine_or_an_unreadable_cloud_asks_nothing_and_stops_nothing(
    monkeypatch: pytest.MonkeyPatch,
    ssh_port: socket.socket,
    tmp_path: Path,
    unity_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = GcpWorld(instances={("us-central1-b", "synthdet-vm-1a2b3c4"): "TERMINATED"})
    with faked_gcp(monkeypatch, world) as fake:
        assert vm_not_running(props(ssh_port, tmp_path, unity_checkpoint, None)) is None
        assert fake.requests == []  # no cloud VM of the stack's (the ssh stack): no question
    # The API out of reach (the fake is gone): the deploy goes on to SSH and its own hint.
    assert vm_not_running(props(ssh_port, tmp_path, unity_checkpoint, GCP_VM)) is None
    assert "the VM's state is unknown" in capsys.readouterr().err


def test_destroying_the_bootstrap_of_a_stopped_vm_skips_the_undeploy_at_once(
    monkeypatch: pytest.MonkeyPatch, ssh_port: socket.socket, tmp_path: Path, unity_checkpoint: Path
) -> None:
    undeployed: list[Any] = []
    monkeypatch.setattr(bootstrap.deploy, "undeploy", lambda *args, **_: undeployed.append(args))
    world = GcpWorld(instances={("us-central1-b", "synthdet-vm-1a2b3c4"): "TERMINATED"})
    with faked_gcp(monkeypatch, world):
        BootstrapProvider().delete("id", props(ssh_port, tmp_path, unity_checkpoint, GCP_VM))
    assert undeployed == [] and not connected(ssh_port)
