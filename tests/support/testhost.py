"""Throwaway systemd "VMs" for the system tests: systemd-nspawn guests in network namespaces.

A test host is a Debian 12 container booted with a real systemd as PID 1 and a real
OpenSSH server, reachable only from this machine at 10.203.N.2 over a veth pair. It looks
like a freshly created cloud GPU VM (minus the GPU): root login with an SSH key, a JRE,
nginx, python3-venv/pip, and torch + torchvision preinstalled the way deep-learning images
ship them. Its disk persists across reboots (overlayfs upper layer per host).

Everything here is stdlib only so that the CLI (`tests/testhost`) runs with any Python 3.10+.
It needs root. See docs/testhost.md for the by-hand workflow.

Layout on disk:
    /var/cache/synthdet-testhost/   shared, built once per machine, never deleted by `down`
        rootfs-<hash>/              debootstrap'd Debian (overlay lower layer)
        torch-site-<hash>/          hard links to torch, torchvision and their deps from .venv
        wheels-<hash>/              `pip download` of bootstrap/host_requirements.txt
    /var/lib/synthdet-testhost/<name>/   per host, removed by `down`
        state.json, info.json, id_ed25519{,.pub}, known_hosts, upper/ work/ merged/, *.log, *.pid
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[2]
# The dev venv whose torch the guests get (and whose pip fills the wheelhouse).
VENV = Path(os.environ.get("SYNTHDET_TESTHOST_VENV", REPO_ROOT / ".venv"))
CACHE_ROOT = Path(os.environ.get("SYNTHDET_TESTHOST_CACHE", "/var/cache/synthdet-testhost"))
STATE_ROOT = Path(os.environ.get("SYNTHDET_TESTHOST_STATE", "/var/lib/synthdet-testhost"))

# Bump when the rootfs recipe below changes in a way the package lists do not show.
RECIPE_VERSION = "4"
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
IMAGE_PACKAGES = ("openjdk-17-jre-headless", "nginx", "python3-venv", "python3-pip")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Debian 12's interpreter: the torch site-packages must be built for this minor version.
GUEST_PYTHON = "3.11"
GUEST_PYTHON_FULL = "3.11.2"
GUEST_SITE = f"/usr/local/lib/python{GUEST_PYTHON}/dist-packages"
TORCH_ROOTS = ("torch", "torchvision")

# Used when the bootstrap's pinned list does not exist (yet).
# fmt: off
FALLBACK_HOST_REQUIREMENTS = (
    "torchserve==0.12.0", "torch-model-archiver==0.12.0", "psutil", "packaging", "wheel",
    "pillow", "pyyaml", "nvidia-ml-py",
)
# fmt: on
HOST_REQUIREMENTS = REPO_ROOT / "bootstrap" / "host_requirements.txt"

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
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestHostError(
                        f"timed out after {timeout:.0f} s waiting for {what} ({path}); "
                        "another testhost command is running"
                    ) from None
                time.sleep(0.2)
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
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


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
    deadline = time.monotonic() + 10
    while (pid := _read_pid(pid_path)) is None:
        if time.monotonic() > deadline:
            raise TestHostError(f"{argv[0]} did not start (see {log_path}):\n{_tail(log_path)}")
        time.sleep(0.02)
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


# --------------------------------------------------------------------------- root filesystem


def _apt_mirror() -> str:
    """The Debian mirror this machine uses (deb822 .sources or one-line .list files)."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                types, suites = fields.get("types", "").split(), fields.get("suites", "").split()
                if "deb" in types and SUITE in suites and fields.get("uris"):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    return DEFAULT_MIRROR


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields = {}
    for line in stanza.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(("#", " ", "\t")):
            fields[key.strip().lower()] = value.strip()
    return fields


def rootfs_path() -> Path:
    key = _short_hash(
        {"recipe": RECIPE_VERSION, "suite": SUITE, "base": BASE_PACKAGES, "image": IMAGE_PACKAGES}
    )
    return CACHE_ROOT / f"rootfs-{key}"


def build_rootfs() -> Path:
    """The cached Debian root filesystem (overlay lower layer); builds it if missing.

    Built in a temp dir and renamed at the end, so an interrupted build is never used.
    """
    final = rootfs_path()
    if final.is_dir():
        return final
    _require_supported()
    ensure_tools()
    with _flock(CACHE_ROOT / ".build.lock", 1800, "the cache build lock"):
        if final.is_dir():  # built by a concurrent caller while we waited
            return final
        tmp = final.with_name(f".{final.name}.tmp")
        _remove_tree(tmp)  # leftovers of an interrupted build (unmounts its /proc first)
        log_path = CACHE_ROOT / "logs" / f"{final.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        started = time.monotonic()
        try:
            _debootstrap(tmp, log_path)
            _install_image_packages(tmp, log_path)
            _customize_rootfs(tmp)
        except BaseException:
            _log(f"rootfs build failed; log: {log_path}")
            with contextlib.suppress(TestHostError):
                _remove_tree(tmp)
            raise
        tmp.rename(final)
        _log(f"rootfs ready in {time.monotonic() - started:.0f} s: {final}")
    return final


def _debootstrap(target: Path, log_path: Path) -> None:
    mirror = _apt_mirror()
    _log(f"building the test host rootfs with debootstrap from {mirror} (1-2 min, once)...")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            target,
            mirror,
        ],
        timeout=1200,
        log_path=log_path,
        what="debootstrap",
    )


def _install_image_packages(root: Path, log_path: Path) -> None:
    """Bake in what the image carries. policy-rc.d keeps nginx from starting on *this*
    machine's network during the install; Java's postinst needs /proc."""
    _log(f"installing {' '.join(IMAGE_PACKAGES)} into the rootfs...")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _run(["mount", "-t", "proc", "proc", root / "proc"], timeout=30)
    try:
        env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
        _run(
            [
                "chroot",
                root,
                *env,
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                *IMAGE_PACKAGES,
            ],
            timeout=1200,
            log_path=log_path,
            what="apt-get install in the rootfs",
        )
        _run(["chroot", root, "apt-get", "clean"], timeout=60, log_path=log_path)
    finally:
        _run(["umount", root / "proc"], check=False, timeout=30)
        policy.unlink(missing_ok=True)


def _customize_rootfs(root: Path) -> None:
    """Make the shared image host-neutral; per-host identity goes into each host's layer."""
    (root / "etc/hostname").unlink(missing_ok=True)  # so `-M NAME` names the guest
    for key in (root / "etc/ssh").glob("ssh_host_*"):  # generated per host at `up`
        key.unlink()
    (root / "etc/machine-id").write_text("")  # written per host at `up`
    dbus_id = root / "var/lib/dbus/machine-id"  # else every host shares D-Bus's id
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    # minbase has no /etc/hosts; `up` appends the host's own name to this one.
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    (root / GUEST_SITE.lstrip("/")).mkdir(parents=True, exist_ok=True)  # torch bind target
    # The journal persists on the host's disk layer; keep it small like a cloud image would.
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "synthdet-testhost.conf").write_text("[Journal]\nSystemMaxUse=64M\n")
    (root / "etc/synthdet-testhost").write_text(
        f"recipe={RECIPE_VERSION}\nbuilt={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
    )


# --------------------------------------------------------------------------- torch site-packages


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<str>'[^']*'|"[^"]*")|(?P<op>===|==|!=|<=|>=|~=|<|>|\(|\))"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"""
)
_VERSION_VARS = {"python_version", "python_full_version", "implementation_version"}


def _guest_marker_env() -> dict[str, str]:
    """PEP 508 marker variables as the guest's interpreter would report them."""
    return {
        "python_version": GUEST_PYTHON,
        "python_full_version": GUEST_PYTHON_FULL,
        "implementation_version": GUEST_PYTHON_FULL,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": os.uname().machine,
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(m) for m in re.findall(r"\d+", text.split("+")[0])[:4])


def _compare(lhs: tuple[bool, str], op: str, rhs: tuple[bool, str], env: dict[str, str]) -> bool:
    """One `a OP b` of a marker; each side is (is_variable, text)."""
    names = {t for is_var, t in (lhs, rhs) if is_var}
    left = env.get(lhs[1], "") if lhs[0] else lhs[1]
    right = env.get(rhs[1], "") if rhs[0] else rhs[1]
    if "extra" in names:
        left, right = _normalize(left), _normalize(right)
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    if names & _VERSION_VARS and op not in ("===",):
        if op in ("==", "!=") and right.endswith(".*"):
            equal = left == right[:-2] or left.startswith(right[:-1])
            return equal if op == "==" else not equal
        a, b = _version_tuple(left), _version_tuple(right)
        return {
            "==": a == b,
            "!=": a != b,
            "<": a < b,
            "<=": a <= b,
            ">": a > b,
            ">=": a >= b,
            "~=": a >= b and a[: max(len(b) - 1, 1)] == b[: max(len(b) - 1, 1)],
        }[op]
    return {"==": left == right, "===": left == right, "!=": left != right}.get(op, False)


def _eval_marker(marker: str, env: dict[str, str]) -> bool:
    """A small PEP 508 marker evaluator (stdlib only: `packaging` may not be importable)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(marker.rstrip()):
        m = _TOKEN_RE.match(marker, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse marker {marker!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    index = 0

    def peek() -> str:
        return tokens[index][1] if index < len(tokens) else ""

    def take() -> tuple[str, str]:
        nonlocal index
        index += 1
        return tokens[index - 1]

    def value() -> tuple[bool, str]:
        kind, text = take()
        return (False, text[1:-1]) if kind == "str" else (True, text)

    def atom() -> bool:
        if peek() == "(":
            take()
            result = expr()
            take()  # ")"
            return result
        lhs = value()
        op = take()[1]
        if op == "not":
            op = "not " + take()[1]
        return _compare(lhs, op, value(), env)

    def conjunction() -> bool:
        result = atom()
        while peek() == "and":
            take()
            result = atom() and result
        return result

    def expr() -> bool:
        result = conjunction()
        while peek() == "or":
            take()
            result = conjunction() or result
        return result

    return expr()


def _parse_requirement(text: str) -> tuple[str, frozenset[str], str]:
    """`name[extra,...] (spec) ; marker` -> (name, extras, marker)."""
    spec, _, marker = text.partition(";")
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    if not m:
        raise ValueError(f"cannot parse requirement {text!r}")
    extras = frozenset(_normalize(e) for e in (m.group(2) or "").split(",") if e.strip())
    return m.group(1), extras, marker.strip()


def _venv_site_packages() -> Path:
    matches = sorted((VENV / "lib").glob("python3*/site-packages"))
    if not matches:
        raise TestHostError(f"no site-packages under {VENV}/lib; create the dev venv first")
    site = matches[0]
    if site.parent.name != f"python{GUEST_PYTHON}":
        raise TestHostError(
            f"{site} is for {site.parent.name}, but the guest's Python is {GUEST_PYTHON}: "
            "torch's binary modules would not load there"
        )
    return site


def torch_closure(site: Path | None = None) -> list[importlib.metadata.Distribution]:
    """torch, torchvision and exactly their transitive runtime dependencies, as installed.

    Follows Requires-Dist with the guest's markers. The roots get no extras; extras that a
    dependency line itself asks for (torch needs `cuda-toolkit[cublas,...]`) are honoured,
    otherwise the CUDA libraries torch links against would be left out.
    """
    site = site or _venv_site_packages()
    installed = {
        _normalize(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[str(site)])
    }
    base_env = _guest_marker_env()
    chosen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str], str]] = [(r, frozenset(), "(root)") for r in TORCH_ROOTS]
    while todo:
        name, extras, wanted_by = todo.pop()
        key = _normalize(name)
        dist = installed.get(key)
        if dist is None:
            if key in (_normalize(r) for r in TORCH_ROOTS):
                raise TestHostError(f"{name} is not installed in {site}")
            _log(f"warning: {name} (needed by {wanted_by}) is not installed in the venv; skipped")
            chosen.setdefault(key, set())
            continue
        if key in chosen and extras <= chosen[key]:
            continue
        chosen.setdefault(key, set()).update(extras)
        active = sorted(chosen[key]) or [""]
        for line in dist.requires or []:
            req_name, req_extras, marker = _parse_requirement(line)
            if marker and not any(_eval_marker(marker, {**base_env, "extra": e}) for e in active):
                continue
            todo.append((req_name, req_extras, dist.metadata["Name"]))
    return sorted((installed[k] for k in chosen if k in installed), key=lambda d: _normalize(d.name))


def _dist_files(dist: importlib.metadata.Distribution, site: Path) -> set[PurePosixPath]:
    """A distribution's files per RECORD (inside site-packages), its whole .dist-info dir, and
    the cached bytecode of its .py files (the guest's copy is read-only: no pyc writes)."""
    found: set[PurePosixPath] = set()
    for entry in dist.files or []:
        rel = PurePosixPath(str(entry))
        if rel.is_absolute() or ".." in rel.parts:
            continue  # console scripts in bin/ and the like
        found.add(rel)
        if rel.parts[0].endswith(".dist-info"):
            found.update(
                PurePosixPath(p.relative_to(site).as_posix())
                for p in (site / rel.parts[0]).rglob("*")
                if p.is_file()
            )
        if rel.suffix == ".py":
            cache = site / rel.parent / "__pycache__"
            found.update(
                PurePosixPath(p.relative_to(site).as_posix()) for p in cache.glob(f"{rel.stem}.*.pyc")
            )
    return found


def torch_site_path() -> tuple[Path, list[importlib.metadata.Distribution]]:
    site = _venv_site_packages()
    dists = torch_closure(site)
    key = _short_hash(
        {
            "recipe": TORCH_SITE_VERSION,
            "site": str(site),
            # RECORD's mtime changes when pip reinstalls a distribution in place.
            "dists": [(d.metadata["Name"], d.version, _record_mtime(d, site)) for d in dists],
        }
    )
    return CACHE_ROOT / f"torch-site-{key}", dists


def _record_mtime(dist: importlib.metadata.Distribution, site: Path) -> int:
    for entry in dist.files or []:
        if entry.name == "RECORD" and entry.parent.name.endswith(".dist-info"):
            with contextlib.suppress(OSError):
                return (site / str(entry)).stat().st_mtime_ns
    return 0


def build_torch_site() -> Path:
    """A site-packages with torch + torchvision + deps, hard-linked from .venv (no disk cost).

    Bound read-only into the guest, which also protects the venv's files (they are the same
    inodes) from anything the bootstrap does in the guest.
    """
    final, dists = torch_site_path()
    if final.is_dir():
        return final
    site = _venv_site_packages()
    with _flock(CACHE_ROOT / ".build.lock", 1800, "the cache build lock"):
        if final.is_dir():
            return final
        _log(f"linking torch site-packages for the guest ({len(dists)} distributions)...")
        started = time.monotonic()
        tmp = final.with_name(f".{final.name}.tmp")
        _remove_tree(tmp)
        tmp.mkdir(parents=True)
        copied = 0
        files = set().union(*(_dist_files(d, site) for d in dists))
        for rel in sorted(files):
            copied += _link_into(site / rel, tmp / rel)
        if copied:
            _log(f"warning: {copied} files were copied, not hard-linked (another filesystem?)")
        (tmp / ".synthdet-testhost.json").write_text(
            json.dumps({d.metadata["Name"]: d.version for d in dists}, indent=1) + "\n"
        )
        tmp.rename(final)
        names = ", ".join(f"{d.metadata['Name']}=={d.version}" for d in dists)
        _log(f"torch site ready in {time.monotonic() - started:.1f} s: {final}\n  {names}")
    return final


def _link_into(src: Path, dst: Path) -> int:
    """Hard-link one file (1 if it had to be copied instead)."""
    if not src.exists() and not src.is_symlink():
        return 0  # RECORD lists a file that is gone; pip check would complain, we need not
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return 0
    try:
        os.link(src, dst)
        return 0
    except OSError:
        shutil.copy2(src, dst)
        return 1


# --------------------------------------------------------------------------- wheelhouse


def _host_requirements() -> tuple[str, str]:
    """(requirements text, where it came from)."""
    if HOST_REQUIREMENTS.is_file():
        return HOST_REQUIREMENTS.read_text(), str(HOST_REQUIREMENTS)
    return "\n".join(FALLBACK_HOST_REQUIREMENTS) + "\n", "the built-in fallback list"


def build_wheelhouse() -> Path:
    """`pip download` of the bootstrap's host packages, served to the guest over HTTP."""
    text, source = _host_requirements()
    final = CACHE_ROOT / f"wheels-{_short_hash({'req': text, 'py': GUEST_PYTHON})}"
    if final.is_dir():
        return final
    pip = VENV / "bin" / "pip"
    pip_cmd = [str(pip)] if pip.exists() else [sys.executable, "-m", "pip"]
    with _flock(CACHE_ROOT / ".build.lock", 1800, "the cache build lock"):
        if final.is_dir():
            return final
        if source != str(HOST_REQUIREMENTS):
            _log(f"note: {HOST_REQUIREMENTS} does not exist; using {source}")
        _log(f"downloading the wheelhouse from {source}...")
        tmp = final.with_name(f".{final.name}.tmp")
        _remove_tree(tmp)
        tmp.mkdir(parents=True)
        req_file = CACHE_ROOT / f".{final.name}.requirements.txt"  # not inside the served dir
        req_file.write_text(text)
        try:
            _run(
                [*pip_cmd, "download", "-q", "--disable-pip-version-check", "-d", tmp, "-r", req_file],
                timeout=1200,
                what="pip download of the host requirements",
            )
        finally:
            req_file.unlink(missing_ok=True)
        tmp.rename(final)
        _log(f"wheelhouse ready: {final} ({len(list(final.iterdir()))} files)")
    return final


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


# --------------------------------------------------------------------------- network


def _used_subnets() -> set[int]:
    used = set()
    for state_file in STATE_ROOT.glob("*/state.json"):
        state = _load_json(state_file) or {}
        if isinstance(state.get("n"), int):
            used.add(state["n"])
    addrs = _run(["ip", "-o", "-4", "addr", "show"], timeout=10).stdout
    used.update(int(n) for n in re.findall(rf"inet {re.escape(SUBNET_PREFIX)}\.(\d+)\.", addrs))
    return used


def _allocate_subnet() -> int:
    used = _used_subnets()
    for n in SUBNET_RANGE:
        if n not in used:
            return n
    raise TestHostError(f"all {len(SUBNET_RANGE)} subnets are taken; `tests/testhost down --all` frees them")


def _setup_network(name: str, n: int) -> None:
    ns = _netns(name)
    host_if, guest_if = _veths(name)
    net = f"{SUBNET_PREFIX}.{n}"
    for argv in (
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", guest_if],
        ["ip", "link", "set", guest_if, "netns", ns],
        ["ip", "addr", "add", f"{net}.1/24", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", guest_if],
        ["ip", "-n", ns, "link", "set", guest_if, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        # No default route on purpose: DNS then fails at once instead of after 10 s.
    ):
        _run(argv, timeout=15)


def _teardown_network(name: str) -> None:
    ns = _netns(name)
    if ns in _run(["ip", "netns", "list"], timeout=10).stdout.split():
        _run(["ip", "netns", "del", ns], timeout=15)  # takes the veth pair with it
    # The host end normally vanishes with the namespace (asynchronously); this catches a veth
    # left by an `up` that crashed before moving the peer into the namespace.
    host_if, _ = _veths(name)
    deadline = time.monotonic() + 5
    while Path(f"/sys/class/net/{host_if}").exists():
        _run(["ip", "link", "del", host_if], timeout=15, check=False)
        if time.monotonic() > deadline:
            raise TestHostError(f"could not delete the interface {host_if}")
        time.sleep(0.1)


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
    deadline = time.monotonic() + 15
    while pids := {p for p in _cgroup_pids(name) if _pid_alive(p)}:
        if time.monotonic() > deadline:
            raise TestHostError(f"processes {sorted(pids)} of {name} survived SIGKILL")
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.1)
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


def ssh_argv(info: TestHostInfo, *, tty: bool = False) -> list[str]:
    """The `ssh ...` prefix that logs into the host (no host key checks: hosts are throwaway)."""
    return [
        "ssh",
        *SSH_OPTIONS,
        "-i",
        info.key,
        "-p",
        str(info.port),
        *(["-t"] if tty else []),
        f"{info.user}@{info.host}",
    ]


def ssh_exec(info: TestHostInfo, cmd: str | Sequence[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run a command in the guest with the `ssh` binary: (exit status, stdout, stderr).

    A string is run by the guest's shell; a list is quoted first. 255 means ssh itself failed.
    """
    remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
    try:
        proc = subprocess.run(
            [*ssh_argv(info), remote],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise TestHostError(f"ssh {info.name}: {remote!r} timed out after {timeout:.0f} s") from exc
    return proc.returncode, proc.stdout, proc.stderr


def _wait_for_ssh(name: str, info: TestHostInfo, timeout: float, since: float) -> None:
    """Poll until key login works; fail early (with the console) if the guest died."""
    state_dir = _state_dir(name)
    deadline = time.monotonic() + timeout
    last_err = ""
    while time.monotonic() < deadline:
        rc, _, err = ssh_exec(info, "true", timeout=15)
        if rc == 0:
            _log(f"{name}: SSH answers ({time.monotonic() - since:.1f} s)")
            return
        last_err = err.strip()
        if not _proc_matches(_read_pid(state_dir / "supervisor.pid"), "_supervise", name):
            raise TestHostError(
                f"{name}: the guest stopped while booting. Supervisor log:\n"
                f"{_tail(state_dir / 'supervisor.log', 10)}\nConsole:\n"
                f"{_tail(state_dir / 'console.log', 40)}"
            )
        time.sleep(0.25)
    raise TestHostError(
        f"{name}: no SSH login within {timeout:.0f} s (last ssh error: {last_err}).\n"
        f"Console ({state_dir / 'console.log'}):\n{_tail(state_dir / 'console.log', 40)}"
    )


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
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1):
            return port
        if not _pid_alive(pid) or time.monotonic() > deadline:
            raise TestHostError(f"the wheelhouse server did not start:\n{_tail(state_dir / 'http.log')}")
        time.sleep(0.05)


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


def up(name: str, timeout: float = BOOT_TIMEOUT) -> TestHostInfo:
    """Boot host `name` (or return the running one) and wait until root can log in by key."""
    _check_name(name)
    _require_supported()
    ensure_tools()
    # Shared caches first, under their own lock: concurrent `up`s wait here, not below.
    rootfs, torch_site, wheelhouse = build_rootfs(), build_torch_site(), build_wheelhouse()
    with _flock(STATE_ROOT / ".state.lock", 300, "the test host state lock"):
        state_dir = _state_dir(name)
        if _is_running(name):
            host = TestHostInfo(**(_load_json(state_dir / "info.json") or {}))
            _wait_for_ssh(name, host, timeout, time.monotonic())
            return host
        if state_dir.exists() or Path(f"/run/netns/{_netns(name)}").exists():
            _log(f"{name}: cleaning up leftovers of an earlier run")
            _teardown(name)
        try:
            return _create(name, rootfs, torch_site, wheelhouse, timeout)
        except BaseException:
            _log(f"{name}: boot failed; cleaning up")
            with contextlib.suppress(TestHostError):
                _teardown(name)
            raise


def _create(name: str, rootfs: Path, torch_site: Path, wheelhouse: Path, timeout: float) -> TestHostInfo:
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
        [sys.executable, str(Path(__file__).resolve()), "_supervise", name],
        state_dir / "supervisor.log",
        state_dir / "supervisor.pid",
    )
    host = _info_from_state(state)
    _wait_for_ssh(name, host, timeout, started)
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
        rc, _, err = ssh_exec(host, "systemctl reboot", timeout=30)
        ssh_error = err.strip() if rc else ""
    except TestHostError as exc:
        ssh_error = str(exc)
    deadline = started + timeout
    while boots_file.exists() and boots_file.read_text().strip() == before:
        if not _is_running(name):
            raise TestHostError(
                f"{name}: the guest powered off instead of rebooting. Console:\n"
                f"{_tail(state_dir / 'console.log', 40)}"
            )
        if time.monotonic() > deadline:
            raise TestHostError(
                f"{name}: the guest did not reboot within {timeout:.0f} s "
                f"(`systemctl reboot` over SSH said: {ssh_error or 'nothing'}); "
                f"`tests/testhost down {name}` and `up` start it afresh"
            )
        time.sleep(0.1)
    _wait_for_ssh(name, host, max(deadline - time.monotonic(), 5), started)
    return host


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


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tests/testhost",
        description="Throwaway systemd test hosts (systemd-nspawn) for the SSH bootstrap. "
        "Needs root. Progress goes to stderr; `up` prints one JSON line to stdout.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="boot a host (or print the running one's JSON)")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p = sub.add_parser("down", help="power off and remove a host (safe if it is not up)")
    p.add_argument("names", nargs="*")
    p.add_argument("--all", action="store_true", help="every host on this machine")
    p = sub.add_parser("reboot", help="reboot a host and wait for SSH")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p = sub.add_parser("status", help="list hosts")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("exec", help="run a command in a host over SSH (a shell without one)")
    p.add_argument("name")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("build", help="build or update the cached rootfs, torch site and wheelhouse")
    return parser


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so a half-booted host is cleaned up


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_supervise"] and len(argv) == 2:  # internal: the detached supervisor
        return _supervise(argv[1])
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with `&`
    try:
        return _dispatch(args)
    except TestHostError as exc:
        print(f"testhost: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        print(up(args.name, timeout=args.timeout).to_json(), flush=True)
    elif args.command == "down":
        names = hosts() if args.all else args.names
        if not names and not args.all:
            raise TestHostError("name a host to take down, or pass --all")
        for name in names:
            down(name)
            _log(f"{name}: down")
    elif args.command == "reboot":
        started = time.monotonic()
        print(reboot(args.name, timeout=args.timeout).to_json(), flush=True)
        _log(f"{args.name}: rebooted in {time.monotonic() - started:.1f} s")
    elif args.command == "status":
        rows = status()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for row in rows:
            print(
                f"{row['name']:<24} {row['host'] or '-':<14} "
                f"{'running' if row['running'] else 'stopped':<8} boots={row['boots']}"
            )
    elif args.command == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        host = info(args.name)
        if not cmd:
            os.execvp("ssh", ssh_argv(host, tty=True))
        return subprocess.run([*ssh_argv(host), shlex.join(cmd)]).returncode
    elif args.command == "build":
        _require_supported()
        for path in (build_rootfs(), build_torch_site(), build_wheelhouse()):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
