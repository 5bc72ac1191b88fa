"""A test host's life: its disk and identity, the logins clouds make, boot, SSH, reboot, down.

`up` boots a guest (systemd-nspawn under a small supervisor that restarts it on
reboot) and creates the login the clouds give you: root, GCP's (`synthdet`,
in adm, video and google-sudoers, with passwordless sudo through that group)
or an AWS Ubuntu image's (`ubuntu`, in sudo, with a cloud-init sudoers line).
Root's key login stays for inspection (`ssh_exec`, `tests/testhost exec`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.polling import poll
from tests.support.testhost.common import (
    BOOT_TIMEOUT,
    GUEST_SITE,
    NAME_RE,
    NSPAWN_REBOOT_STATUS,
    PREFERRED_HTTP_PORT,
    REPO_ROOT,
    SSH_OPTIONS,
    STATE_ROOT,
    SUBNET_PREFIX,
    TestHostError,
    TestHostInfo,
    _cgroup_dirs,
    _check_name,
    _find_procs,
    _flock,
    _kill,
    _load_json,
    _log,
    _netns,
    _pid_alive,
    _proc_matches,
    _read_pid,
    _remove_tree,
    _require_supported,
    _run,
    _spawn_detached,
    _state_dir,
    _stop_process,
    _tail,
    _wait_dead,
    _write_json,
    ensure_tools,
)
from tests.support.testhost.image import build_rootfs
from tests.support.testhost.network import _allocate_subnet, _setup_network, _teardown_network
from tests.support.testhost.torch_site import build_torch_site
from tests.support.testhost.wheelhouse import build_wheelhouse

# The command line that runs this package's CLI (the supervisor is started through it).
TESTHOST_SCRIPT = REPO_ROOT / "tests" / "testhost"


@dataclass(frozen=True)
class Login:
    """A login the way a cloud image creates it."""

    user: str
    groups: tuple[str, ...]
    # /etc/sudoers.d line (None: no sudo rights at all).
    sudoers: str | None


# The clouds' logins (docs/testhost.md); `plain` and `password-sudo` are for the
# tests of what a deploy says when the login cannot use sudo without a password.
LOGINS: dict[str, Login] = {
    "root": Login("root", (), None),
    "gcp": Login(
        "synthdet", ("adm", "video", "google-sudoers"), "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL"
    ),
    "ubuntu": Login("ubuntu", ("adm", "sudo"), "ubuntu ALL=(ALL) NOPASSWD:ALL"),
    "plain": Login("plain", (), None),
    "password-sudo": Login("pwsudo", ("sudo",), None),  # Debian's own %sudo line asks for a password
}
DEFAULT_LOGIN = "gcp"


def add_login(info: TestHostInfo, kind: str) -> TestHostInfo:
    """Create a login of this kind in a running guest (as root), with the host's key; the
    returned info logs in as it."""
    login = LOGINS[kind]
    if login.user == "root":
        return TestHostInfo(**{**asdict(info), "user": "root"})
    q = shlex.quote
    groups = ",".join(login.groups)
    lines = [
        "set -e",
        *(f"getent group {q(g)} >/dev/null || groupadd {q(g)}" for g in login.groups),
        f"id -u {q(login.user)} >/dev/null 2>&1 || useradd -m -s /bin/bash"
        + (f" -G {q(groups)}" if groups else "")
        + f" {q(login.user)}",
        f"install -d -m 700 -o {q(login.user)} -g {q(login.user)} /home/{login.user}/.ssh",
        f"install -m 600 -o {q(login.user)} -g {q(login.user)} /root/.ssh/authorized_keys "
        f"/home/{login.user}/.ssh/authorized_keys",
    ]
    if login.sudoers:
        lines.append(f"printf '%s\\n' {q(login.sudoers)} > /etc/sudoers.d/90-{login.user}")
        lines.append(f"chmod 440 /etc/sudoers.d/90-{login.user}")
    rc, out, err = ssh_exec(info, "\n".join(lines), timeout=60)
    if rc != 0:
        raise TestHostError(f"{info.name}: could not create the {kind} login {login.user}: {err or out}")
    return TestHostInfo(**{**asdict(info), "user": login.user})


# --------------------------------------------------------------------------- per-host disk


def _prepare_disk(state_dir: Path, rootfs: Path) -> tuple[Path, str]:
    """The guest's root: an overlay (shared image below, this host's changes above), or a
    full copy where overlayfs does not work. Either way it survives reboots."""
    upper, work, merged = (state_dir / d for d in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={rootfs},upperdir={upper},workdir={work}"
    proc = _run(["mount", "-t", "overlay", "overlay", "-o", options, merged], check=False)
    if proc.returncode == 0:
        return merged, "overlay"
    _log(f"overlayfs failed here ({proc.stderr.strip()}); copying the rootfs instead (slower)")
    disk = state_dir / "disk"
    _run(["cp", "-a", "--reflink=auto", rootfs, disk], timeout=900, what="copying the rootfs")
    return disk, "copy"


def _personalize(root: Path, name: str, state_dir: Path) -> Path:
    """Per-host identity in the host's own layer: machine id, SSH host keys, root's key."""
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    hosts = root / "etc/hosts"
    hosts.write_text((hosts.read_text() if hosts.exists() else "") + f"127.0.1.1\t{name}\n")
    # Fresh host keys per host, like a new VM; `ssh-keygen -A -f` writes below root/etc/ssh.
    _run(["ssh-keygen", "-A", "-f", root], timeout=60)
    key = state_dir / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"testhost-{name}", "-f", key])
    key.chmod(0o600)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(key.with_suffix(".pub").read_text())
    auth.chmod(0o600)
    return key


# --------------------------------------------------------------------------- supervisor


def _nspawn_argv(state: dict) -> list[str]:
    return [
        "systemd-nspawn",
        "--boot",
        f"--directory={state['root']}",
        f"--machine={state['name']}",
        "--register=no",
        "--keep-unit",  # there is no systemd on the build machine to talk to
        f"--network-namespace-path=/run/netns/{state['netns']}",
        f"--bind-ro={state['torch_site']}:{GUEST_SITE}",
        # The guest has its own network namespace; the deploy's firewall step loads
        # nftables rules there, as on a VM.
        "--capability=CAP_NET_ADMIN",
        "--link-journal=no",
        "--console=read-only",
    ]


def _supervise(name: str) -> int:
    """Keep one guest running: restart nspawn when the guest reboots (exit 133), stop on any
    other exit. SIGTERM only marks us as stopping; `down` then powers the guest off itself.

    Runs detached (own session) with the host's cgroups joined first, so that nspawn and the
    guest's systemd get a cgroup subtree of their own (the build machine has no systemd).
    """
    state_dir = _state_dir(name)
    state = _load_json(state_dir / "state.json")
    if state is None:
        print(f"no state for {name}", flush=True)
        return 1
    for cg in _cgroup_dirs(name):
        cg.mkdir(exist_ok=True)
        (cg / "cgroup.procs").write_text(str(os.getpid()))
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    boots = 0
    rc = 0
    while not stopping:
        boots += 1
        with open(state_dir / "console.log", "a") as console:
            console.write(f"\n=== testhost: boot {boots} at {time.strftime('%H:%M:%S')} ===\n")
            console.flush()
            proc = subprocess.Popen(
                _nspawn_argv(state),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        (state_dir / "nspawn.pid").write_text(f"{proc.pid}\n")
        (state_dir / "boots").write_text(f"{boots}\n")
        rc = proc.wait()
        print(f"{time.strftime('%H:%M:%S')} nspawn exited with status {rc}", flush=True)
        if rc != NSPAWN_REBOOT_STATUS:
            break
    (state_dir / "nspawn.pid").unlink(missing_ok=True)
    return 0 if rc in (0, NSPAWN_REBOOT_STATUS) else rc


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for cg in _cgroup_dirs(name):
        if cg.is_dir():
            for procs in cg.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroups(name: str) -> None:
    """Kill anything left in the host's cgroups, then remove the (now empty) dirs."""

    def kill_the_rest() -> set[int]:
        pids = {p for p in _cgroup_pids(name) if _pid_alive(p)}
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        return pids

    gone, survivors = poll(kill_the_rest, lambda pids: not pids, timeout_s=15, every_s=0.1)
    if not gone:
        raise TestHostError(f"processes {sorted(survivors)} of {name} survived SIGKILL")
    for cg in _cgroup_dirs(name):
        if cg.is_dir():
            for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
    left = [str(cg) for cg in _cgroup_dirs(name) if cg.exists()]
    if left:
        raise TestHostError(f"could not remove cgroup dirs {left}")


# --------------------------------------------------------------------------- ssh


def ssh_argv(info: TestHostInfo, *, tty: bool = False, user: str = "root") -> list[str]:
    """The `ssh ...` prefix that logs into the host (no host key checks: hosts are throwaway).

    As root by default: the harness inspects the guest; deploys log in as `info.user`.
    """
    return [
        "ssh",
        *SSH_OPTIONS,
        "-i",
        info.key,
        "-p",
        str(info.port),
        *(["-t"] if tty else []),
        f"{user}@{info.host}",
    ]


def ssh_exec(
    info: TestHostInfo, cmd: str | Sequence[str], timeout: float = 120, user: str = "root"
) -> tuple[int, str, str]:
    """Run a command in the guest with the `ssh` binary: (exit status, stdout, stderr).

    A string is run by the guest's shell, as ssh does; a list is quoted first. 255 means
    ssh itself failed.
    """
    remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
    timed_out = f"ssh {info.name}: {remote!r} timed out after {timeout:.0f} s"
    return _captured([*ssh_argv(info, user=user), remote], timeout, timed_out)


def _captured(
    argv: list[str], timeout: float, timed_out: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `argv`, no stdin; TestHostError(`timed_out`) past `timeout`."""
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise TestHostError(timed_out) from exc
    return proc.returncode, proc.stdout, proc.stderr


def _wait_for_ssh(name: str, info: TestHostInfo, timeout: float, since: float) -> None:
    """Poll until key login works; fail early (with the console) if the guest died."""
    state_dir = _state_dir(name)

    def try_login() -> str:
        rc, _, err = ssh_exec(info, "true", timeout=15, user=info.user)
        if rc != 0 and not _proc_matches(_read_pid(state_dir / "supervisor.pid"), "_supervise", name):
            raise TestHostError(
                f"{name}: the guest stopped while booting. Supervisor log:\n"
                f"{_tail(state_dir / 'supervisor.log', 10)}\nConsole:\n"
                f"{_tail(state_dir / 'console.log', 40)}"
            )
        return "" if rc == 0 else (err.strip() or f"exit {rc}")

    logged_in, last_error = poll(try_login, lambda error: not error, timeout_s=timeout, every_s=0.25)
    if not logged_in:
        raise TestHostError(
            f"{name}: no SSH login within {timeout:.0f} s (last ssh error: {last_error}).\n"
            f"Console ({state_dir / 'console.log'}):\n{_tail(state_dir / 'console.log', 40)}"
        )
    _log(f"{name}: SSH answers ({time.monotonic() - since:.1f} s)")


# --------------------------------------------------------------------------- http server


def _free_port(ip: str) -> int:
    """PREFERRED_HTTP_PORT when free on that address, else whatever the kernel picks."""
    for port in (PREFERRED_HTTP_PORT, 0):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise TestHostError(f"no free TCP port on {ip}")


def _start_http(state_dir: Path, ip: str, wheelhouse: Path) -> int:
    port = _free_port(ip)
    argv = [sys.executable, "-m", "http.server", "--bind", ip, str(port), "--directory", str(wheelhouse)]
    pid = _spawn_detached(argv, state_dir / "http.log", state_dir / "http.pid")

    def answers() -> bool:
        if not _pid_alive(pid):
            raise TestHostError(f"the wheelhouse server exited:\n{_tail(state_dir / 'http.log')}")
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1):
            return True
        return False

    started, _ = poll(answers, lambda ok: ok, timeout_s=15, every_s=0.05)
    if not started:
        raise TestHostError(f"the wheelhouse server did not start:\n{_tail(state_dir / 'http.log')}")
    return port


# --------------------------------------------------------------------------- lifecycle


def _info_from_state(state: dict) -> TestHostInfo:
    net = f"{SUBNET_PREFIX}.{state['n']}"
    return TestHostInfo(
        name=state["name"],
        host=f"{net}.2",
        user="root",
        key=str(_state_dir(state["name"]) / "id_ed25519"),
        port=22,
        deploy_args=[
            "--pip-find-links",
            f"http://{net}.1:{state['http_port']}/",
            "--pip-trusted-host",
            f"{net}.1",
        ],
        host_side_ip=f"{net}.1",
        known_hosts=str(_state_dir(state["name"]) / "known_hosts"),
    )


def _is_running(name: str) -> bool:
    state_dir = _state_dir(name)
    return (
        _proc_matches(_read_pid(state_dir / "supervisor.pid"), "_supervise", name)
        and (state_dir / "info.json").exists()
    )


def info(name: str) -> TestHostInfo:
    """The connection info of a running host."""
    data = _load_json(_state_dir(_check_name(name)) / "info.json")
    if data is None or not _is_running(name):
        raise TestHostError(f"test host {name} is not up; run `tests/testhost up {name}`")
    return TestHostInfo(**data)


def up(name: str, timeout: float = BOOT_TIMEOUT, login: str = DEFAULT_LOGIN) -> TestHostInfo:
    """Boot host `name` (or return the running one) with a cloud's login (`LOGINS`), and wait
    until it can log in by key. The returned info (and the JSON) names that login's user."""
    if login not in LOGINS:
        raise TestHostError(f"unknown login {login!r}: one of {', '.join(LOGINS)}")
    _check_name(name)
    _require_supported()
    ensure_tools()
    # Shared caches first, under their own lock: concurrent `up`s wait here, not below.
    rootfs, torch_site, wheelhouse = build_rootfs(), build_torch_site(), build_wheelhouse()
    with _flock(STATE_ROOT / ".state.lock", 300, "the test host state lock"):
        state_dir = _state_dir(name)
        if _is_running(name):
            host = TestHostInfo(**(_load_json(state_dir / "info.json") or {}))
            if host.user != LOGINS[login].user:
                # Never hand back another login than the one asked for, silently.
                raise TestHostError(
                    f"test host {name} is up with the login {host.user!r}, not {LOGINS[login].user!r} "
                    f"(--login {login}): `tests/testhost down {name}` first, or use another name"
                )
            _wait_for_ssh(name, host, timeout, time.monotonic())
            return host
        if state_dir.exists() or Path(f"/run/netns/{_netns(name)}").exists():
            _log(f"{name}: cleaning up leftovers of an earlier run")
            _teardown(name)
        try:
            return _create(name, rootfs, torch_site, wheelhouse, timeout, login)
        except BaseException:
            _log(f"{name}: boot failed; cleaning up")
            with contextlib.suppress(TestHostError):
                _teardown(name)
            raise


def _create(
    name: str, rootfs: Path, torch_site: Path, wheelhouse: Path, timeout: float, login: str
) -> TestHostInfo:
    started = time.monotonic()
    state_dir = _state_dir(name)
    state_dir.mkdir(parents=True, mode=0o700)
    n = _allocate_subnet()
    state = {
        "name": name,
        "n": n,
        "netns": _netns(name),
        "torch_site": str(torch_site),
        "rootfs": str(rootfs),
        "wheelhouse": str(wheelhouse),
        "http_port": None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_json(state_dir / "state.json", state)  # first, so `down` can undo a partial `up`
    root, mode = _prepare_disk(state_dir, rootfs)
    _personalize(root, name, state_dir)
    (state_dir / "known_hosts").write_text("")  # fresh: first contact records the new host key
    _setup_network(name, n)
    state.update(
        root=str(root), disk=mode, http_port=_start_http(state_dir, f"{SUBNET_PREFIX}.{n}.1", wheelhouse)
    )
    _write_json(state_dir / "state.json", state)
    _log(f"{name}: booting {SUBNET_PREFIX}.{n}.2 ({mode} disk)...")
    _spawn_detached(
        [sys.executable, str(TESTHOST_SCRIPT), "_supervise", name],
        state_dir / "supervisor.log",
        state_dir / "supervisor.pid",
    )
    host = _info_from_state(state)
    _wait_for_ssh(name, host, timeout, started)
    host = add_login(host, login)
    _write_json(state_dir / "info.json", asdict(host))
    return host


def _teardown(name: str) -> None:
    """Undo everything `up` did, in reverse order; works from partial or stale state."""
    state_dir = _state_dir(name)
    state = _load_json(state_dir / "state.json") or {}
    errors: list[str] = []

    def step(what: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except (TestHostError, OSError) as exc:
            errors.append(f"{what}: {exc}")

    step("stopping the guest", _stop_guest, name)
    step("removing cgroups", _remove_cgroups, name)
    step("stopping the wheelhouse server", _stop_http, name, state)
    step("removing the network", _teardown_network, name)
    step("removing the state dir", _remove_tree, state_dir)
    if errors:
        raise TestHostError(f"{name}: cleanup was incomplete:\n" + "\n".join(errors))


def _stop_guest(name: str) -> None:
    """Supervisor first (so it will not restart anything), then power off via SIGTERM to nspawn.

    Never SIGRTMIN+3 to nspawn: it dies of it and orphans the guest.
    """
    state_dir = _state_dir(name)
    supervisors = [
        p
        for p in {_read_pid(state_dir / "supervisor.pid"), *_find_procs("_supervise", name)}
        if p and _proc_matches(p, "_supervise", name)
    ]
    for pid in supervisors:
        _kill(pid, signal.SIGTERM)
    nspawns = [
        p
        for p in {_read_pid(state_dir / "nspawn.pid"), *_find_procs("systemd-nspawn", f"--machine={name}")}
        if p and _proc_matches(p, "systemd-nspawn", f"--machine={name}")
    ]
    for pid in nspawns:
        _kill(pid, signal.SIGTERM)
    if not _wait_dead(nspawns, 30):
        _log(f"{name}: the guest did not power off within 30 s; killing it")
        for pid in nspawns:
            _kill(pid, signal.SIGKILL)
    for pid in supervisors:
        _stop_process(pid, 10)


def _stop_http(name: str, state: dict) -> None:
    pid = _read_pid(_state_dir(name) / "http.pid")
    needles = ["http.server"]
    if isinstance(state.get("n"), int):
        needles += ["--bind", f"{SUBNET_PREFIX}.{state['n']}.1"]
        for stray in _find_procs(*needles):
            _stop_process(stray, 5)
    if _proc_matches(pid, *needles):
        _stop_process(pid, 5)


def down(name: str) -> None:
    """Power off host `name` and remove all it created (but not the shared caches)."""
    _check_name(name)
    _require_supported()
    with _flock(STATE_ROOT / ".state.lock", 300, "the test host state lock"):
        _teardown(name)


def hosts() -> list[str]:
    """Names of hosts with state on this machine (running or not)."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if p.is_dir() and NAME_RE.match(p.name))


def reboot(name: str, timeout: float = BOOT_TIMEOUT) -> TestHostInfo:
    """Reboot the guest from inside (like `sudo reboot` on a VM) and wait for SSH again.

    The disk (overlay upper layer) is kept; the supervisor restarts nspawn on exit 133.
    """
    host = info(name)
    state_dir = _state_dir(name)
    boots_file = state_dir / "boots"
    before = boots_file.read_text().strip()
    started = time.monotonic()
    ssh_error = ""
    try:  # ssh may report an error when the guest drops the connection while shutting down
        rc, _, err = ssh_exec(host, "systemctl reboot", timeout=30)  # as root
        ssh_error = err.strip() if rc else ""
    except TestHostError as exc:
        ssh_error = str(exc)
    deadline = started + timeout

    def still_first_boot() -> bool:
        if not _is_running(name):
            raise TestHostError(
                f"{name}: the guest powered off instead of rebooting. Console:\n"
                f"{_tail(state_dir / 'console.log', 40)}"
            )
        return boots_file.exists() and boots_file.read_text().strip() == before

    rebooted, _ = poll(still_first_boot, lambda same_boot: not same_boot, timeout_s=timeout, every_s=0.1)
    if not rebooted:
        raise TestHostError(
            f"{name}: the guest did not reboot within {timeout:.0f} s "
            f"(`systemctl reboot` over SSH said: {ssh_error or 'nothing'}); "
            f"`tests/testhost down {name}` and `up` start it afresh"
        )
    _wait_for_ssh(name, host, max(deadline - time.monotonic(), 5), started)
    return host


def is_running(name: str) -> bool:
    """Whether the guest is up: False once it powered itself off (`systemctl poweroff`), as a
    VM is stopped; `power_on` boots it again."""
    return _is_running(_check_name(name))


def power_on(name: str, timeout: float = BOOT_TIMEOUT) -> TestHostInfo:
    """Boot again a host whose guest powered itself off, like starting a stopped VM: its disk,
    network, address, keys and logins are all kept. A running host is left as it is."""
    _check_name(name)
    state_dir = _state_dir(name)
    data = _load_json(state_dir / "info.json")
    if data is None or not (state_dir / "state.json").exists():
        raise TestHostError(f"test host {name} was never up (or is down): `tests/testhost up {name}`")
    host = TestHostInfo(**data)
    started = time.monotonic()
    with _flock(STATE_ROOT / ".state.lock", 300, "the test host state lock"):
        if not _is_running(name):
            _log(f"{name}: powering on (disk kept)...")
            _spawn_detached(
                [sys.executable, str(TESTHOST_SCRIPT), "_supervise", name],
                state_dir / "supervisor.log",
                state_dir / "supervisor.pid",
            )
    _wait_for_ssh(name, host, timeout, started)
    return host


def guest_exec(name: str, cmd: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run a shell command in the running guest as root without logging in: `nsenter` into
    its namespaces. For tests that must not open an SSH session (idle stop counts them as
    use of the machine). (exit status, stdout, stderr)."""
    nspawn = _read_pid(_state_dir(_check_name(name)) / "nspawn.pid")
    children = Path(f"/proc/{nspawn}/task/{nspawn}/children") if nspawn else None
    init = children.read_text().split()[0] if children and children.exists() and children.read_text() else ""
    if not init:
        raise TestHostError(f"test host {name} is not running (no guest init to enter)")
    argv = ["nsenter", f"--target={init}", "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd"]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    timed_out = f"{name}: {cmd!r} timed out after {timeout:.0f} s in the guest"
    return _captured([*argv, "--", "/bin/sh", "-c", cmd], timeout, timed_out, env)


def status() -> list[dict]:
    """One dict per host: name, address, running, boots."""
    rows = []
    for name in hosts():
        state = _load_json(_state_dir(name) / "state.json") or {}
        boots = _state_dir(name) / "boots"
        rows.append(
            {
                "name": name,
                "host": f"{SUBNET_PREFIX}.{state['n']}.2" if "n" in state else None,
                "running": _is_running(name),
                "boots": int(boots.read_text()) if boots.exists() else 0,
                "disk": state.get("disk"),
                "state_dir": str(_state_dir(name)),
            }
        )
    return rows
