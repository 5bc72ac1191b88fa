"""What every part of the test host shares: paths, settings, errors, and small process helpers.

A test host is a Debian 12 container booted with a real systemd as PID 1 and a real
OpenSSH server, reachable only from this machine at 10.203.N.2 over a veth pair. It looks
like a freshly created cloud GPU VM (minus the GPU): a login with an SSH key (root, or the
non-root sudo user a cloud makes), a JRE, nginx, nftables, python3-venv/pip, and torch +
torchvision preinstalled the way deep-learning images ship them. Its disk persists across
reboots (overlayfs upper layer per host).

Layout on disk:
    /var/cache/synthdet-testhost/   shared, built once per machine, never deleted by `down`
        rootfs-<hash>/              debootstrap'd Debian (overlay lower layer)   image.py
        torch-site-<hash>/          hard links to torch, torchvision and their deps   torch_site.py
        wheels-<hash>/              the service's locked packages (pip download)   wheelhouse.py
    /var/lib/synthdet-testhost/<name>/   per host, removed by `down`   guest.py, network.py
        state.json, info.json, id_ed25519{,.pub}, known_hosts, upper/ work/ merged/, *.log, *.pid
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serving.polling import poll, retry

REPO_ROOT = Path(__file__).resolve().parents[3]
# The dev venv whose torch the guests get (and whose pip fills the wheelhouse).
VENV = Path(os.environ.get("SYNTHDET_TESTHOST_VENV", REPO_ROOT / ".venv"))
CACHE_ROOT = Path(os.environ.get("SYNTHDET_TESTHOST_CACHE", "/var/cache/synthdet-testhost"))
STATE_ROOT = Path(os.environ.get("SYNTHDET_TESTHOST_STATE", "/var/lib/synthdet-testhost"))

# Bump when the rootfs recipe below changes in a way the package lists do not show.
RECIPE_VERSION = "5"
# Bump when the way the torch site-packages is assembled changes.
TORCH_SITE_VERSION = "1"
SUITE = "bookworm"
# fmt: off
# What `debootstrap --include` puts in: a minimal systemd VM with SSH.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "sudo",
    "ca-certificates", "curl", "openssl",
)
# fmt: on
# What a cloud deep-learning image (or our prepared image) already carries.
# nftables: the deploy's firewall step needs `nft`; the guest has no internet to apt-get it.
# libnginx-mod-stream: nginx's stream module, for the ACME splitter on :443 (the guest has no
# internet, so a deploy with ACME finds it here, as a cloud image's apt would).
IMAGE_PACKAGES = (
    "openjdk-17-jre-headless",
    "nginx",
    "libnginx-mod-stream",
    "nftables",
    "python3-venv",
    "python3-pip",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Debian 12's interpreter: the torch site-packages must be built for this minor version.
GUEST_PYTHON = "3.11"
GUEST_PYTHON_FULL = "3.11.2"
GUEST_SITE = f"/usr/local/lib/python{GUEST_PYTHON}/dist-packages"
TORCH_ROOTS = ("torch", "torchvision")

# What the guests install with pip (locked with hashes): the service venv's packages
# (the SSH deploy) and a replica's boot venv (its startup script).
SERVICE_REQUIREMENTS = REPO_ROOT / "bootstrap" / "requirements" / "service.txt"
BOOT_REQUIREMENTS = REPO_ROOT / "bootstrap" / "requirements" / "boot.txt"

SUBNET_PREFIX = "10.203"
SUBNET_RANGE = range(1, 251)
PREFERRED_HTTP_PORT = 8000
NSPAWN_REBOOT_STATUS = 133  # systemd-nspawn's exit status when the guest rebooted
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")

BOOT_TIMEOUT = 120.0
SSH_CONFIG = (
    "BatchMode=yes",  # never prompt for a password
    "StrictHostKeyChecking=no",  # hosts are throwaway; each re-creation has new host keys
    "UserKnownHostsFile=/dev/null",
    "IdentitiesOnly=yes",
    "LogLevel=ERROR",  # no "Permanently added ..." on every call
    "ConnectTimeout=3",
)
# -F /dev/null: ignore the user's ~/.ssh/config.
SSH_OPTIONS = ("-F", "/dev/null", *(arg for opt in SSH_CONFIG for arg in ("-o", opt)))


class TestHostError(RuntimeError):
    """A test host could not be built, booted or cleaned; the message says what to do."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class TestHostInfo:
    """How to reach a test host; `tests/testhost up` prints exactly these keys as JSON."""

    __test__ = False  # not a pytest test class

    name: str
    host: str
    user: str
    key: str
    port: int
    deploy_args: list[str] = field(default_factory=list)
    host_side_ip: str = ""
    known_hosts: str = ""

    @property
    def wheelhouse_url(self) -> str:
        """The `--pip-find-links` URL served from the host side of the veth."""
        return self.deploy_args[self.deploy_args.index("--pip-find-links") + 1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


# --------------------------------------------------------------------------- small helpers


def _log(message: str) -> None:
    print(f"testhost: {message}", file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 120,
    check: bool = True,
    log_path: Path | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise TestHostError with its output (or the log's tail)."""
    args = [str(a) for a in argv]
    try:
        if log_path is not None:
            with open(log_path, "a") as log:
                log.write(f"$ {shlex.join(args)}\n")
                log.flush()
                proc = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                )
        else:
            proc = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
            )
    except FileNotFoundError as exc:
        raise TestHostError(f"{args[0]} is not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestHostError(f"{what or shlex.join(args)} timed out after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        detail = _tail(log_path) if log_path else (proc.stderr or proc.stdout or "").strip()
        raise TestHostError(
            f"{what or shlex.join(args)} failed with exit status {proc.returncode}:\n{detail}"
        )
    return proc


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _short_hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _flock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """An exclusive lock file (kept on disk: removing it while others wait would be racy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            retry(
                lambda: fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB),
                timeout_s=timeout,
                every_s=0.2,
                when=BlockingIOError,
            )
        except BlockingIOError:
            raise TestHostError(
                f"timed out after {timeout:.0f} s waiting for {what} ({path}); "
                "another testhost command is running"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int | None) -> bool:
    """True for a running process; zombies count as dead (nobody may reap our orphans)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _proc_matches(pid: int | None, *needles: str) -> bool:
    """The pid is alive and each needle is one of its arguments (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    assert pid is not None
    args = _cmdline(pid)
    return all(n in args for n in needles)


def _find_procs(*needles: str) -> list[int]:
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [pid for pid in pids if pid != os.getpid() and _proc_matches(pid, *needles)]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_dead(pids: Sequence[int], timeout: float) -> bool:
    """True once none of `pids` is alive, False if one still is after `timeout` seconds."""
    dead, _ = poll(
        lambda: any(_pid_alive(p) for p in pids), lambda alive: not alive, timeout_s=timeout, every_s=0.1
    )
    return dead


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop_process(pid: int | None, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal, wait, then SIGKILL whatever is left."""
    if not _pid_alive(pid):
        return
    assert pid is not None
    _kill(pid, sig)
    if not _wait_dead([pid], timeout):
        _kill(pid, signal.SIGKILL)
        _wait_dead([pid], 5)


def _spawn_detached(argv: Sequence[str], log_path: Path, pid_path: Path) -> int:
    """Start argv in its own session, reparented away from us (`setsid --fork`).

    Double-forking matters: a long-lived child of a pytest process would stay a zombie after
    `down` kills it, and pgrep-style checks would still "see" it. The shell writes the pid
    and then execs, so the pid is the real process's.
    """
    pid_path.unlink(missing_ok=True)
    wrapper = ["setsid", "--fork", "sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pid_path)]
    with open(log_path, "a") as log:
        subprocess.run(
            [*wrapper, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=10,
        )
    _, pid = poll(lambda: _read_pid(pid_path), lambda found: found is not None, timeout_s=10, every_s=0.02)
    if pid is None:
        raise TestHostError(f"{argv[0]} did not start (see {log_path}):\n{_tail(log_path)}")
    return pid


# --------------------------------------------------------------------------- mounts


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4].encode().decode("unicode_escape")
        if mnt == prefix or mnt.startswith(prefix + "/"):
            found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _unmount_under(path: Path) -> None:
    for mnt in _mounts_under(path):
        if _run(["umount", mnt], check=False, timeout=30).returncode != 0:
            # Busy (a process still has its cwd there): detach it lazily rather than leak it.
            _run(["umount", "--lazy", mnt], check=False, timeout=30)
    left = _mounts_under(path)
    if left:
        raise TestHostError(f"could not unmount {', '.join(left)}; unmount them by hand")


def _remove_tree(path: Path) -> None:
    """rm -rf that never follows into a mount (a forgotten /proc or overlay mount)."""
    if not path.exists() and not path.is_symlink():
        return
    _unmount_under(path)
    _run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)


# --------------------------------------------------------------------------- support checks


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _cgroup_roots() -> list[Path]:
    """Where nspawn's cgroup goes: the named systemd v1 hierarchy and/or the v2 one."""
    base = Path("/sys/fs/cgroup")
    hybrid = [base / "systemd", base / "unified"]
    if all((p / "cgroup.procs").exists() for p in hybrid):
        return hybrid
    if (base / "cgroup.controllers").exists():  # pure cgroup v2
        return [base]
    if (base / "systemd" / "cgroup.procs").exists():  # pure v1 with a named systemd hierarchy
        return [base / "systemd"]
    return []


def is_supported() -> tuple[bool, str]:
    """Can this machine boot test hosts? (False, what is missing and what to do) if not."""
    if not sys.platform.startswith("linux"):
        return False, "test hosts need Linux (systemd-nspawn, network namespaces)"
    if os.geteuid() != 0:
        return False, "test hosts need root (network namespaces, mounts, cgroups): run as root"
    caps = _capabilities()
    if not (caps >> 21) & 1 or not (caps >> 12) & 1:
        return False, "root lacks CAP_SYS_ADMIN/CAP_NET_ADMIN here (an unprivileged container?)"
    if not _cgroup_roots():
        return False, "no usable cgroup hierarchy under /sys/fs/cgroup"
    if "overlay" not in Path("/proc/filesystems").read_text() and not shutil.which("cp"):
        return False, "neither overlayfs nor cp is available for the per-host disk"
    missing = [t for t in ("ip", "ssh", "ssh-keygen", "setsid", "mount") if not shutil.which(t)]
    if missing:
        return (
            False,
            f"missing tools: {', '.join(missing)} (apt-get install iproute2 openssh-client util-linux mount)",
        )
    if not (shutil.which("debootstrap") and shutil.which("systemd-nspawn")) and not shutil.which("apt-get"):
        return False, "debootstrap/systemd-nspawn are missing and there is no apt-get to add them"
    return True, "ok"


def _require_supported() -> None:
    ok, reason = is_supported()
    if not ok:
        raise TestHostError(reason)


def ensure_tools() -> None:
    """Install debootstrap and systemd-nspawn with apt-get when they are missing."""
    if shutil.which("debootstrap") and shutil.which("systemd-nspawn"):
        return
    _log("installing debootstrap and systemd-container with apt-get (once per machine)...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "debootstrap", "systemd-container"],
    ):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise TestHostError(
                f"{shlex.join(argv)} failed; install debootstrap and systemd-container by "
                f"hand:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )


# --------------------------------------------------------------------------- per-host names


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TestHostError(
            f"invalid host name {name!r}: use 1-40 of a-z, 0-9 and '-', starting with a letter "
            "or digit (it becomes the guest's hostname)"
        )
    return name


def _state_dir(name: str) -> Path:
    return STATE_ROOT / name


def _netns(name: str) -> str:
    return f"sdth-{name}"


def _veths(name: str) -> tuple[str, str]:
    """Interface names are limited to 15 characters, so derive them from a hash of the name."""
    tag = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"th{tag}-h", f"th{tag}-g"


def _cgroup_dirs(name: str) -> list[Path]:
    return [root / f"th-{name}" for root in _cgroup_roots()]


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
