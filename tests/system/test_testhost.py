"""The test host tool itself: what the bootstrap's system tests rely on.

One shared host (the `testhost` fixture) serves most tests; the cleanup tests boot their own.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import signal
import stat
import subprocess
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.support import testhost as th
from tests.support.deployment import guest
from tests.support.testhost.cli import remote_command
from tests.support.testhost.image import rootfs_path

pytestmark = pytest.mark.system

CLI = Path(__file__).resolve().parents[1] / "testhost"
GUEST_SITE = "/usr/local/lib/python3.11/dist-packages"


def test_the_clouds_login_and_root_log_in_with_the_host_key(testhost: th.TestHostInfo) -> None:
    assert stat.S_IMODE(os.stat(testhost.key).st_mode) == 0o600
    assert guest(testhost, "id -un; hostname").split() == ["root", testhost.name]
    # The JSON's user is GCP's login: non-root, its own home, passwordless sudo.
    assert testhost.user == "synthdet"
    rc, out, err = th.ssh_exec(testhost, "id -u; echo $HOME; sudo -n id -un", user=testhost.user)
    assert rc == 0, err
    uid, home, sudo_user = out.split()
    assert int(uid) >= 1000 and home == "/home/synthdet" and sudo_user == "root"
    # The shared image must not carry anyone's key: it lives in this host's own layer.
    rootfs = rootfs_path()
    assert not (rootfs / "root/.ssh/authorized_keys").exists()
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))


def test_cli_up_is_idempotent_and_prints_the_json(testhost: th.TestHostInfo) -> None:
    proc = subprocess.run([str(CLI), "up", testhost.name], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data == asdict(testhost)
    ip = data["host_side_ip"]
    assert data["host"] == re.sub(r"\.1$", ".2", ip)
    assert data["user"] == "synthdet" and data["port"] == 22
    assert data["deploy_args"][0::2] == ["--pip-find-links", "--pip-trusted-host"]
    assert re.fullmatch(rf"http://{re.escape(ip)}:\d+/", data["deploy_args"][1])
    assert data["deploy_args"][3] == ip
    assert Path(data["known_hosts"]).is_file()


def test_systemd_reaches_running(testhost: th.TestHostInfo) -> None:
    rc, out, _ = th.ssh_exec(testhost, "timeout 90 systemctl is-system-running --wait", 120)
    state = out.strip()
    if state != "running":
        _, failed, _ = th.ssh_exec(
            testhost, "systemctl --failed --no-pager; journalctl -b -p err --no-pager | tail -40"
        )
        pytest.fail(f"systemctl is-system-running: {state!r} (rc {rc}); failing units:\n{failed}")


def test_torch_is_preinstalled_but_torchserve_is_not(testhost: th.TestHostInfo) -> None:
    out = guest(
        testhost,
        ["python3", "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
        timeout=180,  # the first import reads ~5 GB of libraries cold
    )
    torch_v, vision_v = out.split()
    assert torch_v.split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    assert vision_v.split("+")[0] == importlib.metadata.version("torchvision").split("+")[0]
    listing = guest(
        testhost,
        [
            "python3",
            "-c",
            "import importlib.metadata as m; print(' '.join(sorted("
            f"d.metadata['Name'].lower() for d in m.distributions(path=['{GUEST_SITE}']))))",
        ],
    ).split()
    assert "torch" in listing and "torchvision" in listing
    assert "torchserve" not in listing and "torch-model-archiver" not in listing
    # Read-only: the files are hard links into the dev venv, which the guest must not touch.
    rc, _, _ = th.ssh_exec(testhost, f"touch {GUEST_SITE}/torch/__init__.py")
    assert rc != 0


def test_wheelhouse_is_served_to_the_guest(testhost: th.TestHostInfo) -> None:
    url = testhost.wheelhouse_url
    listing = guest(testhost, ["curl", "-fsS", "--max-time", "10", url])
    assert "torchserve-" in listing and ".whl" in listing
    # The deploy arguments are enough for pip (plain HTTP needs --trusted-host).
    guest(
        testhost,
        [
            "python3",
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-index",
            "--find-links",
            url,
            "--trusted-host",
            testhost.host_side_ip,
            "-d",
            "/tmp/wheel-check",
            "torchserve",
        ],
    )


def test_cli_exec_takes_a_command_string_like_ssh(testhost: th.TestHostInfo) -> None:
    assert remote_command(["--", "echo a; echo b"]) == "echo a; echo b"
    assert remote_command(["systemctl", "is-active", "nginx"]) == "systemctl is-active nginx"
    proc = subprocess.run(
        [str(CLI), "exec", testhost.name, "--", "echo one; echo $((1 + 1))"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["one", "2"], proc.stderr


def test_cli_status_says_so_when_no_host_is_up(tmp_path: Path) -> None:
    env = {**os.environ, "SYNTHDET_TESTHOST_STATE": str(tmp_path / "empty")}
    proc = subprocess.run([str(CLI), "status"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "no test hosts on this machine" in proc.stdout


def test_reboot_keeps_the_disk(testhost: th.TestHostInfo) -> None:
    token = uuid.uuid4().hex
    boot_before = guest(
        testhost, f"echo {token} > /var/lib/testhost-marker; cat /proc/sys/kernel/random/boot_id"
    ).strip()
    th.reboot(testhost.name, timeout=120)
    marker, boot_after = guest(
        testhost, "cat /var/lib/testhost-marker; cat /proc/sys/kernel/random/boot_id"
    ).split()
    assert marker == token
    assert boot_after != boot_before
    guest(testhost, f"test -f {GUEST_SITE}/torch/__init__.py")  # the bind is back too


def _assert_nothing_left(info: th.TestHostInfo) -> None:
    state_dir = Path(info.key).parent
    name = info.name
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"sdth-{name}" not in [line.split()[0] for line in netns.splitlines() if line.strip()]
    for pattern in (
        rf"systemd-nspawn .*--machine={name}( |$)",
        rf"_supervise {name}$",
        rf"http\.server --bind {re.escape(info.host_side_ip)} ",
    ):
        pgrep = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
        assert pgrep.returncode == 1, f"left running: {pgrep.stdout}"
    assert str(state_dir) not in Path("/proc/self/mounts").read_text()
    assert not state_dir.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/th-{name}")) + list(
        Path("/sys/fs/cgroup").glob(f"th-{name}")
    )
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert f"{info.host_side_ip}/" not in addrs
    assert not [pid for pid, root in _process_roots() if root.startswith(str(state_dir))]


def _process_roots() -> list[tuple[str, str]]:
    """(pid, root dir) of every process: a guest's processes have their root in its disk."""
    roots = []
    for link in Path("/proc").glob("[0-9]*/root"):
        with contextlib.suppress(OSError):  # exited meanwhile
            roots.append((link.parent.name, os.readlink(link)))
    return roots


def test_down_removes_everything_and_is_repeatable(fresh_testhost) -> None:
    info = fresh_testhost()
    guest(info, "true")
    th.down(info.name)
    _assert_nothing_left(info)
    th.down(info.name)  # safe when it is not up


def test_up_cleans_up_after_a_crashed_run(fresh_testhost) -> None:
    info = fresh_testhost()
    state_dir = Path(info.key).parent
    # A crash: everything of ours dies at once and leaves the guest's systemd orphaned.
    for pid_file in ("supervisor.pid", "nspawn.pid", "http.pid"):
        os.kill(int((state_dir / pid_file).read_text()), signal.SIGKILL)
    again = th.up(info.name)
    assert guest(again, "hostname").strip() == info.name
    th.down(info.name)
    _assert_nothing_left(again)


def test_up_never_hands_back_another_login_than_asked(testhost: th.TestHostInfo) -> None:
    assert th.up(testhost.name).user == testhost.user  # the same login: the running host
    with pytest.raises(th.TestHostError, match=r"is up with the login 'synthdet'.*--login ubuntu"):
        th.up(testhost.name, login="ubuntu")
