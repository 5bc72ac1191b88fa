"""Logins a deploy meets on real clouds, and the ones it must refuse, on a real test host.

The clouds' own logins (GCP's `synthdet`, AWS's `ubuntu`) work through passwordless
sudo; `test_deploy.py` deploys through GCP's. Here: what the test host creates is what
the clouds create, and a login that cannot use sudo, sudo that wants a password, or an
account named like the service that belongs to a person each stop the deploy with a
message that says what to do, before anything on the host has changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bootstrap import deploy as deploy_lib
from bootstrap.api import DeployOptions, DeployResult, SshTarget
from bootstrap.steps.base import ETC_DIR, OPT_DIR, SERVICE_USER, DeployError
from serving.contract import smoke
from serving.models import ModelSpec
from tests.support import testhost as th
from tests.support.deployment import guest, wheelhouse_pip

pytestmark = pytest.mark.system


@pytest.fixture
def host(fresh_testhost: Callable[..., th.TestHostInfo]) -> th.TestHostInfo:
    return fresh_testhost()  # booting one takes a second or two


def target_and_options(info: th.TestHostInfo, tmp_path: Path) -> tuple[SshTarget, DeployOptions]:
    target = SshTarget(info.host, info.user, Path(info.key), known_hosts=tmp_path / "known_hosts")
    return target, DeployOptions(pip=wheelhouse_pip(info))


def attempt(info: th.TestHostInfo, checkpoint: Path, tmp_path: Path) -> DeployResult:
    target, options = target_and_options(info, tmp_path)
    return deploy_lib.deploy(target, [ModelSpec("synthdet", checkpoint)], options)


def untouched(info: th.TestHostInfo) -> None:
    left = guest(info, f"ls -d {ETC_DIR} {OPT_DIR} 2>/dev/null; id -u {SERVICE_USER} 2>/dev/null; true")
    assert left.strip() == "", f"the refused deploy changed the host: {left}"


@pytest.mark.parametrize(
    ("kind", "user", "groups", "sudo_ok"),
    [("gcp", "synthdet", {"adm", "video", "google-sudoers"}, True), ("ubuntu", "ubuntu", {"sudo"}, True)],
)
def test_the_test_host_logs_in_the_way_each_cloud_does(
    host: th.TestHostInfo, kind: str, user: str, groups: set[str], sudo_ok: bool
) -> None:
    info = th.add_login(host, kind)
    assert info.user == user
    rc, out, err = th.ssh_exec(info, "id -un; id -Gn; echo $HOME; sudo -n true && echo SUDO-OK", user=user)
    assert rc == 0, err
    name, member_of, home, *rest = out.split("\n")
    assert name == user and groups <= set(member_of.split()) and home == f"/home/{user}"
    assert ("SUDO-OK" in rest) is sudo_ok


def test_a_deploy_through_the_aws_ubuntu_login_serves_and_undeploys_leaving_the_login(
    host: th.TestHostInfo, unity_checkpoint: Path, tmp_path: Path
) -> None:
    info = th.add_login(host, "ubuntu")  # the Ubuntu Deep Learning AMIs' login: group sudo
    result = attempt(info, unity_checkpoint, tmp_path)
    assert smoke(result.endpoint, timeout_s=120).status == 200
    service_uid = guest(host, f"id -u {SERVICE_USER}").strip()
    assert service_uid not in ("0", guest(host, "id -u ubuntu").strip())
    target, options = target_and_options(info, tmp_path)
    deploy_lib.undeploy(target, options)
    untouched(host)
    rc, out, err = th.ssh_exec(info, "id -Gn; sudo -n true && echo SUDO-OK", user="ubuntu")
    assert rc == 0 and "sudo" in out.split("\n")[0].split() and "SUDO-OK" in out, err


@pytest.mark.parametrize(
    ("kind", "said"),
    [("plain", "may not use sudo"), ("password-sudo", "asks for a password")],
)
def test_a_login_without_passwordless_sudo_is_refused_and_the_host_left_as_it_was(
    host: th.TestHostInfo, unity_checkpoint: Path, tmp_path: Path, kind: str, said: str
) -> None:
    info = th.add_login(host, kind)
    with pytest.raises(DeployError, match=rf"(?s){said}.*NOPASSWD.*Nothing was changed"):
        attempt(info, unity_checkpoint, tmp_path)
    untouched(host)


def test_an_account_named_like_the_service_that_is_a_persons_login_is_never_taken_over(
    host: th.TestHostInfo, unity_checkpoint: Path, tmp_path: Path
) -> None:
    guest(host, f"useradd -m -s /bin/bash -G adm,video {SERVICE_USER}")
    try:
        with pytest.raises(DeployError, match=rf"(?s){SERVICE_USER} already exists.*uid \d+ is a person's"):
            attempt(th.add_login(host, "gcp"), unity_checkpoint, tmp_path)
        left = guest(host, f"ls -d {ETC_DIR} {OPT_DIR} 2>/dev/null; true")
        assert left.strip() == ""
        assert guest(host, f"getent passwd {SERVICE_USER}").split(":")[6].strip() == "/bin/bash"  # unchanged
    finally:
        guest(host, f"userdel -r {SERVICE_USER} 2>/dev/null; true")
    untouched(host)
