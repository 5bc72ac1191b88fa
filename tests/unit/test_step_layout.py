"""The layout step (the service account and directories), undeploy's account guard, and sudo."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from bootstrap.deploy import apply_and_record, check_privileges, remove_account_script, undeploy_script
from bootstrap.runner import CommandError
from bootstrap.steps import layout
from bootstrap.steps.base import SERVICE_USER, STATE_FILE, DeployError, HostState
from bootstrap.steps.step import Outputs
from tests.support.fake_host import FakeRunner, make_run

NO_ACCOUNT = ""
SYSTEM_ACCOUNT = (
    f"{SERVICE_USER}:x:998:998:SynthDet TorchServe:/var/lib/synthdet:/usr/sbin/nologin\n{SERVICE_USER}\n"
)
# What GCP's guest agent makes of the stacks' login (named like the project).
GCP_LOGIN = (
    f"{SERVICE_USER}:x:1000:1001::/home/{SERVICE_USER}:/bin/bash\n{SERVICE_USER} adm video google-sudoers\n"
)


def layout_host(getent: str) -> FakeRunner:
    return FakeRunner().on(r"^getent passwd", getent).on(r"^useradd ").on(r"^set -e\n", "CHANGED\n")


# A system account of that name that some other package made: used, never recorded as ours.
FOREIGN_SYSTEM_ACCOUNT = SYSTEM_ACCOUNT.replace("SynthDet TorchServe", "")


@pytest.mark.parametrize(
    ("getent", "creates", "ours"),
    [(NO_ACCOUNT, True, True), (SYSTEM_ACCOUNT, False, True), (FOREIGN_SYSTEM_ACCOUNT, False, False)],
    ids=["no account yet", "one a deploy made, its record lost", "a system account of another's"],
)
def test_layout_creates_the_service_account_only_when_missing(getent: str, creates: bool, ours: bool) -> None:
    host = layout_host(getent)
    state = HostState()
    done = layout.apply(make_run(host=host), state)
    assert done.changed and done.output == layout.Layout(SERVICE_USER)
    useradd = host.ran(r"^useradd ")
    assert bool(useradd) is creates
    if creates:
        assert "--system" in useradd[0] and "--shell /usr/sbin/nologin" in useradd[0]
        assert useradd[0].endswith(f" {SERVICE_USER}") and "--groups" not in useradd[0]
    # Recorded only when a deploy made it: undeploy removes exactly those.
    assert state.created_users == ([SERVICE_USER] if ours else [])
    directories = host.ran(r"^set -e\n")[0]
    # Its home and working directory are root's; it writes its tmp and log dirs only.
    assert (
        f"'root:{SERVICE_USER} 750' ]; then\n  install -d -o root -g {SERVICE_USER} -m 750 /var/lib/synthdet"
        in (directories)
    )
    assert f"install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 700 /var/lib/synthdet/tmp" in directories
    assert "-name '.*.part-*'" in directories  # partial uploads are swept
    # ... and ours among the system's files (the nginx site holds the URL secret).
    assert "find /etc/nginx/sites-available /etc/systemd/system" in directories
    assert "-name '.synthdet*.part-*'" in directories
    from bootstrap.steps.base import NGINX_SITE, UNIT_FILE
    from bootstrap.steps.firewall import FIREWALL_UNIT_FILE
    from bootstrap.steps.nginx import NGINX_DROPIN

    for placed in (NGINX_SITE, UNIT_FILE, FIREWALL_UNIT_FILE, NGINX_DROPIN):
        folder, name = placed.rsplit("/", 1)
        assert folder in layout.SHARED_SYSTEM_DIRS and name.startswith("synthdet")


@pytest.mark.parametrize(
    ("passwd", "why"),
    [
        (GCP_LOGIN, "uid 1000 is a person's"),
        (f"{SERVICE_USER}:x:1001:1001::/home/x:/usr/sbin/nologin\n{SERVICE_USER}\n", "its home is /home/x"),
        (f"{SERVICE_USER}:x:999:999::/var/lib/x:/bin/sh\n{SERVICE_USER}\n", "login shell (/bin/sh)"),
        (f"{SERVICE_USER}:x:999:999::/var/lib/x:/usr/sbin/nologin\n{SERVICE_USER} sudo\n", "groups sudo"),
        (f"{SERVICE_USER}:x:0:0::/root:/bin/bash\n{SERVICE_USER}\n", "it is root"),
    ],
    ids=["gcp login", "home under /home", "login shell", "admin group", "root"],
)
def test_layout_refuses_an_account_that_belongs_to_somebody(passwd: str, why: str) -> None:
    host = layout_host(passwd)
    state = HostState()
    with pytest.raises(DeployError, match=rf"(?s)already exists.*{re.escape(why)}.*nothing was changed"):
        layout.apply(make_run(host=host), state)
    # It stopped before changing anything: no account, no directory, nothing recorded.
    assert host.commands == [host.commands[0]] and host.commands[0].startswith("getent passwd")
    assert state.created_users == []


def test_a_step_that_fails_half_way_still_records_what_it_did() -> None:
    """useradd ran, then the directories failed: the state on the host names the account."""
    host = layout_host(NO_ACCOUNT).on(r"^set -e\n", (1, "", "install: No space left on device\n"))
    with pytest.raises(CommandError, match="No space left"):
        apply_and_record(layout.STEP, make_run(host=host), HostState(), Outputs())
    assert host.ran(r"^useradd ")
    assert json.loads(host.text(STATE_FILE))["created_users"] == [SERVICE_USER]
    assert host.files[STATE_FILE].mode == "600"


def test_undeploy_removes_only_what_deploy_added() -> None:
    nothing_installed = undeploy_script(HostState())
    assert "systemctl disable --now synthdet-torchserve.service" in nothing_installed
    assert "systemctl disable --now synthdet-firewall.service" in nothing_installed
    assert "nft delete table inet synthdet" in nothing_installed
    assert "/opt/synthdet /var/lib/synthdet /var/log/synthdet /etc/synthdet\n" in nothing_installed
    assert "apt-get" not in nothing_installed and "userdel" not in nothing_installed
    assert "sites-enabled/default" not in nothing_installed
    full = undeploy_script(
        HostState(apt_installed=["nginx"], removed_default_site=True, created_users=[SERVICE_USER])
    )
    assert "purge -y -q nginx" in full and f"userdel {SERVICE_USER}" in full
    assert "ln -sfn /etc/nginx/sites-available/default" in full
    assert "purge" not in undeploy_script(HostState(apt_installed=["nginx"]), keep_packages=True)
    # Only accounts a step declares are ever removed, even when the record names another.
    assert "userdel" not in undeploy_script(HostState(created_users=["postgres"]))


def test_an_old_deploy_state_still_names_the_account_it_created() -> None:
    assert HostState.from_json('{"created_user": true}').created_users == ["synthdet"]
    assert HostState.from_json('{"created_user": false}').created_users == []


@pytest.mark.parametrize(
    ("passwd", "removed"),
    [
        (f"{SERVICE_USER}:x:998:998::/var/lib/synthdet:/usr/sbin/nologin", True),
        (f"{SERVICE_USER}:x:1000:1000::/home/{SERVICE_USER}:/bin/bash", False),
        (f"{SERVICE_USER}:x:997:997::/var/lib/x:/bin/bash", False),
        ("", False),
    ],
    ids=["system account", "a login now", "a shell now", "gone"],
)
def test_undeploy_never_deletes_a_login_even_one_it_created(passwd: str, removed: bool) -> None:
    """The account guard is shell: run it against a fake getent and userdel."""
    script = remove_account_script(SERVICE_USER)
    fake = f"getent() {{ [ -n '{passwd}' ] && echo '{passwd}'; }}; userdel() {{ echo USERDEL \"$1\"; }}; "
    out = subprocess.run(["sh", "-c", fake + script], capture_output=True, text=True, check=True)
    assert (f"USERDEL {SERVICE_USER}" in out.stdout) is removed
    if passwd and not removed:
        assert "not a system account" in out.stderr


@pytest.mark.parametrize(
    ("stderr", "why"),
    [
        ("sudo: a password is required\n", "asks for a password"),
        ("synthdet is not in the sudoers file.  This incident will be reported.\n", "may not use sudo"),
        ("sh: 1: sudo: not found\n", "sudo is not installed"),
    ],
)
def test_a_login_without_passwordless_sudo_is_refused_before_anything_changes(stderr: str, why: str) -> None:
    host = FakeRunner(root=False).on(r"^true$", (1, "", stderr))
    with pytest.raises(DeployError, match=rf"(?s){why}.*NOPASSWD.*Nothing was changed"):
        check_privileges(host)
    assert host.commands == ["true"] and host.sudo_used == [True]
    check_privileges(FakeRunner(root=False).on(r"^true$"))  # passwordless sudo: fine
    check_privileges(FakeRunner(root=True))  # root: nothing to check, nothing sent
