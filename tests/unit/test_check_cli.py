"""`synthdet check --stack NAME` as users run it: a process, a stack file, real HTTP to the fake clouds.

And offline without credentials (a network namespace with nothing in it): a
non-zero exit within 60 s, one readable line, no traceback, for both clouds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.cloud_check import CLOUD_ENV, stack_file
from tests.support.fake_aws_api import fake_aws_api
from tests.support.fake_gcp_api import fake_gcp_api

REPO = Path(__file__).resolve().parents[2]
OFFLINE_LIMIT_S = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_ENV and not k.startswith("AWS_")}
    return {**env, "NO_GCE_CHECK": "true", **extra}


def synthdet_check(
    stack: str, env: dict[str, str], prefix: list[str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "synthdet", "check", "--stack", stack],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def own_stack(cloud_config: dict, tmp_path: Path) -> dict:
    """A user's stack: their model and an explicit SSH range (no look-up of this machine's address)."""
    model = tmp_path / "synthdet.pth"
    model.write_bytes(b"checkpoint")
    return {"synthdet:model": str(model), "synthdet:sshAllowedCidrs": ["203.0.113.0/24"], **cloud_config}


def test_a_healthy_gcp_project_exits_0(tmp_path: Path) -> None:
    name = f"my-check-{uuid.uuid4().hex[:8]}"
    config = own_stack(
        {"synthdet:cloud": "gcp", "gcp:project": "demo-project", "gcp:zone": "us-central1-b"}, tmp_path
    )
    with fake_gcp_api() as (url, world), stack_file(name, config):
        done = synthdet_check(name, clean_env(SYNTHDET_GCP_API_ENDPOINT=url))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{name}: ready for `pulumi up`"
    assert (
        "ok      ssh: the firewall admits SSH from 203.0.113.0/24 only (set in synthdet:sshAllowedCidrs)"
        in done.stdout
    )
    assert world.requests, "the check asked the fake API"


def test_a_gcp_project_without_gpu_quota_exits_1_with_the_lines_that_say_why(tmp_path: Path) -> None:
    name = f"my-check-{uuid.uuid4().hex[:8]}"
    config = own_stack({"synthdet:cloud": "gcp", "gcp:project": "demo-project"}, tmp_path)
    with fake_gcp_api() as (url, world), stack_file(name, config):
        world.without_gpu_quota()
        done = synthdet_check(name, clean_env(SYNTHDET_GCP_API_ENDPOINT=url))
    assert done.returncode == 1
    blockers = [line for line in done.stdout.splitlines() if line.startswith("blocker")]
    assert [b.split(":", 1)[1].split(" is ")[0].strip() for b in blockers] == [
        "GPU quota NVIDIA_T4_GPUS in us-central1",
        "GPU quota GPUS_ALL_REGIONS in project demo-project",
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_healthy_aws_account_exits_0_and_one_without_quota_exits_1(tmp_path: Path) -> None:
    name = f"my-check-{uuid.uuid4().hex[:8]}"
    config = own_stack({"synthdet:cloud": "aws", "synthdet:gpu": "t4", "aws:region": "us-east-1"}, tmp_path)
    keys = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
    with fake_aws_api() as (url, world), stack_file(name, config):
        healthy = synthdet_check(name, clean_env(AWS_ENDPOINT_URL=url, **keys))
        world.without_gpu_quota()
        blocked = synthdet_check(name, clean_env(AWS_ENDPOINT_URL=url, **keys))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert blocked.returncode == 1
    assert [line for line in blocked.stdout.splitlines() if line.startswith("blocker")] == [
        line for line in blocked.stdout.splitlines() if "L-DB2E81BA" in line and "is 0 vCPUs" in line
    ]


def test_an_unknown_stack_says_how_to_make_one() -> None:
    done = synthdet_check("my-no-such-stack", clean_env())
    assert done.returncode == 1
    assert "no stack file stacks/Pulumi.my-no-such-stack.yaml" in done.stdout
    assert "pulumi stack init my-no-such-stack" in done.stdout


def _offline_prefix() -> list[str]:
    """`unshare -n`: a network namespace with only a loopback that is down (root only)."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs unshare and root)")
    return [unshare, "-n"]


@pytest.mark.parametrize("stack", ["gcp-t4", "aws-t4"])
def test_offline_and_without_credentials_it_exits_non_zero_within_60_s(stack: str) -> None:
    env = {k: v for k, v in clean_env().items() if k != "NO_GCE_CHECK"}  # as a user's machine is
    started = time.monotonic()
    done = synthdet_check(stack, env, prefix=_offline_prefix())
    took = time.monotonic() - started
    assert done.returncode == 1 and took < OFFLINE_LIMIT_S, (took, done.stdout, done.stderr)
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    blockers = [line for line in done.stdout.splitlines() if line.startswith("blocker")]
    assert len(blockers) == 1, output
    expected = "gcloud auth application-default login" if stack == "gcp-t4" else "aws configure"
    assert blockers[0].startswith("blocker credentials:") and expected in blockers[0]
