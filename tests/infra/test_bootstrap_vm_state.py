"""The program hands the bootstrap its VM's identity (to say at once when it is stopped),
and asks no cloud anything itself under the mocks (tests/unit/test_stopped_vm.py has the
provider's side against the fake cloud APIs)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.harness import BOOTSTRAP_TYPE, GCP_PROJECT, run_program
from tests.support.cloud_check import faked_aws, faked_gcp


@pytest.mark.parametrize(
    ("stack", "vm"),
    [
        (
            "gcp-t4",
            {"cloud": "gcp", "project": GCP_PROJECT, "zone": "us-central1-a", "name": "synthdet-vm-1a2b3c4"},
        ),
        ("aws-t4", {"cloud": "aws", "region": "us-east-1", "instance_id": "synthdet-vm-id", "profile": ""}),
        ("ssh", None),
    ],
)
def test_the_bootstrap_knows_the_stacks_vm_and_the_program_asks_no_cloud(
    monkeypatch: pytest.MonkeyPatch, required: Any, stack: str, vm: dict[str, str] | None
) -> None:
    with faked_gcp(monkeypatch) as gcp, faked_aws(monkeypatch) as aws:
        run = run_program(stack, required(stack))
        assert gcp.requests == [] and aws.requests == []
    bootstrap = run.one(BOOTSTRAP_TYPE)
    assert bootstrap.plain("cloud_vm") == vm
    assert bootstrap.plain("stack") == stack
