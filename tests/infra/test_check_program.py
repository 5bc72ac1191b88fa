"""The program runs the pre-flight check first: a blocker ends it before any resource exists.

Under Pulumi's test mocks the check skips itself (the mocks are not a cloud);
these tests switch that off where they want it to run, against the fake GCP
API over real HTTP. `SYNTHDET_PREFLIGHT=off` skips it for real runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pulumi
import pytest

import infra.__main__ as program
from infra import preflight
from tests.infra.harness import BOOTSTRAP_TYPE, run_program
from tests.support.cloud_check import clear_cloud_env, faked_gcp
from tests.support.fake_gcp_api import GcpWorld


@pytest.fixture
def gcp_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[GcpWorld]:
    with faked_gcp(monkeypatch) as world:
        yield world


@pytest.fixture
def as_if_real(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the check run although the engine is mocked."""
    monkeypatch.setattr(preflight, "under_mocks", lambda: False)


@pytest.fixture
def resources_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The program's first resource is the URL secret: record whether it was ever made."""
    made: list[str] = []
    real = program.random.RandomPassword

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        made.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(program.random, "RandomPassword", spy)
    return made


def test_under_mocks_the_check_skips_itself(monkeypatch: pytest.MonkeyPatch, required) -> None:
    def must_not_run(*_: Any, **__: Any) -> None:
        raise AssertionError("the check ran under mocks")

    monkeypatch.setattr(preflight, "run_checks", must_not_run)
    run = run_program("gcp-t4", required("gcp-t4"))
    assert run.of_type("gcp:compute/instance:Instance")


def test_a_blocker_ends_the_program_before_anything_is_created(
    gcp_world: GcpWorld, as_if_real: None, resources_made: list[str], required
) -> None:
    gcp_world.without_gpu_quota()
    with pytest.raises(pulumi.RunError) as raised:
        run_program("gcp-t4", {**required("gcp-t4"), "gcp:project": "demo-project"})
    message = str(raised.value)
    assert "synthdet check found 2 blocker(s); nothing was created" in message
    assert "NVIDIA_T4_GPUS in us-central1 is 0" in message and "GPUS_ALL_REGIONS" in message
    assert "SYNTHDET_PREFLIGHT=off skips it" in message
    assert resources_made == []


def test_a_healthy_project_goes_on_and_the_zones_are_in_the_log(
    gcp_world: GcpWorld, as_if_real: None, resources_made: list[str], required
) -> None:
    run = run_program("gcp-t4", {**required("gcp-t4"), "gcp:project": "demo-project"})
    assert resources_made == ["url-secret"]
    zone_lines = [line for line in run.logs if "synthdet check: ok      zone:" in line]
    assert len(zone_lines) == 1
    assert "other zones of us-central1 that do: us-central1-b, us-central1-c, us-central1-f" in zone_lines[0]


def test_on_an_update_the_stacks_own_usage_only_warns(
    gcp_world: GcpWorld, as_if_real: None, required
) -> None:
    """The stack's VM and network count as "in use" once they exist: not a blocker then."""
    gcp_world.with_networks_full()
    gcp_world.region_quotas["us-central1"]["NVIDIA_T4_GPUS"] = (1, 1)
    run = run_program("gcp-t4", {**required("gcp-t4"), "gcp:project": "demo-project"})
    warned = [line for line in run.logs if line.startswith("synthdet check: warning")]
    assert len(warned) == 2 and any("NETWORKS" in line for line in warned)


def test_in_the_program_a_failed_sign_in_only_warns(
    monkeypatch: pytest.MonkeyPatch, as_if_real: None, resources_made: list[str], required
) -> None:
    """Pulumi's provider may sign in in ways the check does not follow: it fails clearly itself."""
    clear_cloud_env(monkeypatch)  # no endpoint, no credentials anywhere
    run = run_program("gcp-t4", {**required("gcp-t4"), "gcp:project": "demo-project"})
    assert resources_made == ["url-secret"]
    warned = [line for line in run.logs if line.startswith("synthdet check: warning credentials:")]
    assert len(warned) == 1 and "gcloud auth application-default login" in warned[0]


def test_synthdet_preflight_off_skips_it(
    monkeypatch: pytest.MonkeyPatch, gcp_world: GcpWorld, as_if_real: None, required
) -> None:
    gcp_world.without_gpu_quota()
    monkeypatch.setenv("SYNTHDET_PREFLIGHT", "off")
    assert preflight.skipped_in_program() == "SYNTHDET_PREFLIGHT=off"
    run = run_program("gcp-t4", {**required("gcp-t4"), "gcp:project": "demo-project"})
    assert run.of_type("gcp:compute/instance:Instance")
    assert gcp_world.requests == []


def test_the_bootstrap_carries_who_the_firewall_admits(required, deployer_ip: str) -> None:
    bootstrap = run_program("gcp-t4", required("gcp-t4")).one(BOOTSTRAP_TYPE)
    hint = bootstrap.plain("ssh_hint")
    assert f"the firewall admits SSH from {deployer_ip}/32 only" in hint
    assert "synthdet:sshAllowedCidrs 'self'" in hint
    assert "pulumi config set --path 'synthdet:sshAllowedCidrs[0]' ADDRESS/32 --stack gcp-t4" in hint


def test_the_ssh_stack_has_no_firewall_of_ours_to_describe(required) -> None:
    bootstrap = run_program("ssh", required("ssh")).one(BOOTSTRAP_TYPE)
    assert bootstrap.plain("ssh_hint") == ""
