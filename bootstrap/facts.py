"""Facts: what the host is and has, read over SSH and parsed into small types.

Each parser takes the text a command printed and is unit-tested against
recorded output (tests/unit/test_facts.py); `gather_host_facts` runs the
commands. Steps compare facts with what is wanted and act on a difference.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from bootstrap.runner import Runner


# --------------------------------------------------------------------- OS
@dataclass(frozen=True)
class OsInfo:
    id: str
    version_id: str
    pretty_name: str
    id_like: tuple[str, ...] = ()

    @property
    def is_debian_like(self) -> bool:
        return self.id in ("debian", "ubuntu") or "debian" in self.id_like


def parse_os_release(text: str) -> OsInfo:
    """/etc/os-release: KEY=value lines, values optionally quoted."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
            value = parts[0] if parts else ""
        except ValueError:
            value = raw.strip("\"'")
        values[key] = value
    return OsInfo(
        id=values.get("ID", "linux"),
        version_id=values.get("VERSION_ID", ""),
        pretty_name=values.get("PRETTY_NAME", values.get("NAME", "Linux")),
        id_like=tuple(values.get("ID_LIKE", "").split()),
    )


# -------------------------------------------------------------------- GPU
@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver_version: str
    # (major, minor) compute capability; None when nvidia-smi is too old to say.
    capability: tuple[int, int] | None
    memory_mb: int | None = None


NVIDIA_SMI_QUERY = (
    "nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader,nounits"
)
# Drivers older than ~510 do not know the compute_cap field.
NVIDIA_SMI_QUERY_OLD = "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits"


def parse_compute_capability(text: str) -> tuple[int, int] | None:
    """'8.6' -> (8, 6); '[N/A]' or garbage -> None."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _parse_int(text: str) -> int | None:
    m = re.match(r"\s*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_nvidia_smi(text: str, *, with_capability: bool = True) -> list[GpuInfo]:
    """CSV rows of NVIDIA_SMI_QUERY (or NVIDIA_SMI_QUERY_OLD) into GpuInfo."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if with_capability and len(cells) >= 4:
            name, driver, cap, mem = cells[:4]
            gpus.append(GpuInfo(name, driver, parse_compute_capability(cap), _parse_int(mem)))
        elif not with_capability and len(cells) >= 3:
            name, driver, mem = cells[:3]
            gpus.append(GpuInfo(name, driver, None, _parse_int(mem)))
    return gpus


def parse_driver_version(text: str) -> tuple[int, ...]:
    """'535.183.01' -> (535, 183, 1); used for 'driver >= X' comparisons."""
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# ------------------------------------------------------------------ torch
# Printed as one JSON line by each candidate Python (never raises: an image
# whose torch is broken must not stop the bootstrap, only disqualify it).
TORCH_PROBE = r"""
import json, sys
out = {"python": sys.executable, "python_version": "%d.%d.%d" % sys.version_info[:3]}
try:
    import venv, ensurepip  # noqa: F401  (Debian splits these into python3-venv)
    out["venv"] = True
except Exception:
    out["venv"] = False
if sys.argv[1:] == ["metadata"]:
    # No GPU: versions are all that matter, and importing torch costs seconds.
    from importlib import metadata
    for dist in ("torch", "torchvision"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist + "_error"] = "not installed"
    print(json.dumps(out))
    sys.exit(0)
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["arch_list"] = list(torch.cuda.get_arch_list()) if torch.version.cuda else []
    out["cuda_available"] = bool(torch.cuda.is_available())
    if out["cuda_available"]:
        out["capability"] = list(torch.cuda.get_device_capability(0))
        out["device_name"] = torch.cuda.get_device_name(0)
    try:
        import torchvision
        out["torchvision"] = torchvision.__version__
    except Exception as exc:
        out["torchvision_error"] = repr(exc)
except Exception as exc:
    out["torch_error"] = repr(exc)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class PythonProbe:
    python: str
    python_version: str
    has_venv: bool = False
    torch: str | None = None
    torchvision: str | None = None
    cuda: str | None = None
    arch_list: tuple[str, ...] = ()
    cuda_available: bool = False
    capability: tuple[int, int] | None = None
    device_name: str | None = None
    error: str | None = None

    @property
    def has_torch(self) -> bool:
        return self.torch is not None and self.torchvision is not None

    @property
    def version(self) -> tuple[int, ...]:
        """(3, 8, 10): what the service-Python policy compares (bootstrap/python_select.py)."""
        return parse_python_version(self.python_version)


def parse_python_version(text: str) -> tuple[int, ...]:
    """'3.11.2' -> (3, 11, 2); 'Python 3.8.10' -> (3, 8, 10); '' or garbage -> ()."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def parse_torch_probe(text: str) -> PythonProbe | None:
    """The last JSON line TORCH_PROBE printed (warnings may come before it)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        cap = d.get("capability")
        return PythonProbe(
            python=d.get("python", ""),
            python_version=d.get("python_version", ""),
            has_venv=bool(d.get("venv", False)),
            torch=d.get("torch"),
            torchvision=d.get("torchvision"),
            cuda=d.get("cuda"),
            arch_list=tuple(d.get("arch_list") or ()),
            cuda_available=bool(d.get("cuda_available", False)),
            capability=(int(cap[0]), int(cap[1])) if cap else None,
            device_name=d.get("device_name"),
            error=d.get("torch_error") or d.get("torchvision_error"),
        )
    return None


# --------------------------------------------------- other interpreters
@dataclass(frozen=True)
class HostPython:
    """An interpreter found on the host besides the image's (python3.11 on PATH, uv's)."""

    path: str
    version: tuple[int, ...]
    # venv + ensurepip importable: `python -m venv` works (Debian splits them out).
    has_venv: bool


# Prints "PATH VERSION VENV" for each interpreter that runs; `{names}` are
# command names or absolute paths (an unmatched glob is skipped by `command -v`).
# Written for any python3 >= 3.0: the point is to find out the version.
_INTERPRETER_SNIPPET = (
    "import sys\n"
    "try:\n"
    "    import venv, ensurepip\n"
    "    v = 1\n"
    "except Exception:\n"
    "    v = 0\n"
    "print('%s %d.%d.%d %d' % ((sys.executable,) + tuple(sys.version_info[:3]) + (v,)))"
)


def interpreter_query(names: tuple[str, ...]) -> str:
    """Shell that reports every interpreter in `names` that exists and runs."""
    snippet = shlex.quote(_INTERPRETER_SNIPPET)
    return (
        f"for p in {' '.join(names)}; do "
        'p="$(command -v "$p")" || continue; '
        f'"$p" -c {snippet} 2>/dev/null || true; done'
    )


def parse_interpreters(text: str) -> list[HostPython]:
    """Lines of interpreter_query into HostPython, first occurrence of a path kept."""
    found: list[HostPython] = []
    seen: set[str] = set()
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(/\S+)\s+(\d+\.\d+\.\d+)\s+([01])\s*", line)
        if not m or m.group(1) in seen:
            continue
        seen.add(m.group(1))
        found.append(HostPython(m.group(1), parse_python_version(m.group(2)), m.group(3) == "1"))
    return found


def parse_apt_candidates(text: str) -> dict[str, str]:
    """`apt-cache policy PKG...` -> {package: candidate version} for those apt can install.

    Unknown packages print nothing; known ones without a candidate say '(none)'.
    """
    candidates: dict[str, str] = {}
    package = None
    for line in text.splitlines():
        header = re.fullmatch(r"(\S+):", line.rstrip())
        if header:
            package = header.group(1)
            continue
        m = re.fullmatch(r"\s+Candidate:\s*(\S+)\s*", line)
        if m and package and m.group(1) != "(none)":
            candidates[package] = m.group(1)
    return candidates


# ------------------------------------------------------- services / files
def parse_is_active(text: str) -> str:
    """`systemctl is-active UNIT` prints one word (active, inactive, failed, ...)."""
    words = text.split()
    return words[0] if words else "unknown"


def parse_is_enabled(text: str) -> bool:
    return (text.split() or ["disabled"])[0] in ("enabled", "enabled-runtime", "alias", "static")


def parse_dpkg_status(text: str) -> dict[str, str]:
    """`dpkg -s PKG...` paragraphs -> {package: version} of the installed ones.

    A package that is known but removed (config-files) is not installed.
    """
    installed: dict[str, str] = {}
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            installed[fields["Package"]] = fields.get("Version", "")
    return installed


# --------------------------------------------------------------- gather
@dataclass(frozen=True)
class HostFacts:
    os: OsInfo
    arch: str
    cpus: int
    memory_mb: int
    gpus: tuple[GpuInfo, ...]
    # Every Python found, best candidate for the service venv first.
    pythons: tuple[PythonProbe, ...] = field(default_factory=tuple)
    nvidia_smi_error: str | None = None

    @property
    def gpu(self) -> GpuInfo | None:
        return self.gpus[0] if self.gpus else None

    @property
    def image_torch(self) -> PythonProbe | None:
        """The image's own Python with torch+torchvision, if any."""
        return next((p for p in self.pythons if p.has_torch), None)

    def summary(self) -> dict[str, str | None]:
        gpu = self.gpu
        torch = self.image_torch
        return {
            "os": self.os.pretty_name,
            "arch": self.arch,
            "gpu": gpu.name if gpu else None,
            "driver": gpu.driver_version if gpu else None,
            "compute_capability": (
                f"{gpu.capability[0]}.{gpu.capability[1]}" if gpu and gpu.capability else None
            ),
            "image_torch": torch.torch if torch else None,
        }


# Where deep-learning images keep their Python (conda first: it is the one
# that carries torch there); Debian/Ubuntu's own python3 last.
PYTHON_CANDIDATES = (
    "/opt/conda/bin/python3",
    "/opt/pytorch/bin/python3",
    "/usr/local/bin/python3",
    "/usr/bin/python3",
)


def parse_meminfo_mb(text: str) -> int:
    m = re.search(r"MemTotal:\s+(\d+)\s*kB", text)
    return int(m.group(1)) // 1024 if m else 0


def gather_host_facts(conn: Runner) -> HostFacts:
    os_info = parse_os_release(conn.run("cat /etc/os-release", sudo=False).stdout)
    basics = conn.run("uname -m; nproc; cat /proc/meminfo", sudo=False).stdout.splitlines()
    arch = basics[0].strip() if basics else ""
    cpus = int(basics[1]) if len(basics) > 1 and basics[1].strip().isdigit() else 1
    memory_mb = parse_meminfo_mb("\n".join(basics[2:]))

    gpus: list[GpuInfo] = []
    smi_error = None
    smi = conn.run(f"command -v nvidia-smi >/dev/null && {NVIDIA_SMI_QUERY}", sudo=False, check=False)
    if smi.ok:
        gpus = parse_nvidia_smi(smi.stdout)
    elif "compute_cap" in (smi.stdout + smi.stderr):
        old = conn.run(NVIDIA_SMI_QUERY_OLD, sudo=False, check=False)
        gpus = parse_nvidia_smi(old.stdout, with_capability=False) if old.ok else []
    elif smi.stdout.strip() or smi.stderr.strip():
        # nvidia-smi exists but fails: usually a driver/kernel-module mismatch.
        smi_error = (smi.stderr.strip() or smi.stdout.strip())[:500]

    # Without a GPU only versions matter; with one, the arch list needs `import torch`.
    mode = "full" if gpus or smi_error else "metadata"
    pythons: list[PythonProbe] = []
    seen: set[str] = set()
    for candidate in PYTHON_CANDIDATES:
        res = conn.run(
            f"[ -x {candidate} ] && readlink -f {candidate} && "
            f"{candidate} - {mode} <<'PROBE'\n{TORCH_PROBE}\nPROBE",
            sudo=False,
            check=False,
            timeout_s=180,
        )
        if not res.ok:
            continue
        real = res.stdout.splitlines()[0].strip()
        if real in seen:
            continue
        seen.add(real)
        probe = parse_torch_probe(res.stdout)
        if probe is not None:
            pythons.append(probe)
    # Prefer a Python that already has torch (the image's), then any other.
    pythons.sort(key=lambda p: not p.has_torch)

    if gpus and gpus[0].capability is None:
        # Old nvidia-smi: take the capability from the image's torch if it can see the GPU.
        cap = next((p.capability for p in pythons if p.capability), None)
        if cap:
            g = gpus[0]
            gpus[0] = GpuInfo(g.name, g.driver_version, cap, g.memory_mb)
    return HostFacts(os_info, arch, cpus, memory_mb, tuple(gpus), tuple(pythons), smi_error)


# --------------------------------------------------------------- accounts
@dataclass(frozen=True)
class Account:
    """A local account as `getent passwd` and `id -Gn` describe it."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    # Every group it is in, its primary group included.
    groups: tuple[str, ...] = ()
    comment: str = ""  # the GECOS field


def parse_account(passwd_line: str, groups_line: str = "") -> Account | None:
    """`getent passwd NAME` (+ `id -Gn NAME`) -> Account; no such account -> None."""
    fields = passwd_line.strip().split(":")
    if len(fields) < 7 or not fields[2].isdigit() or not fields[3].isdigit():
        return None
    return Account(
        name=fields[0],
        uid=int(fields[2]),
        gid=int(fields[3]),
        home=fields[5],
        shell=fields[6],
        groups=tuple(groups_line.split()),
        comment=fields[4],
    )


def account_query(name: str) -> str:
    """Shell printing the passwd line, then the groups, of `name` (nothing when absent)."""
    q = shlex.quote(name)
    return f"getent passwd {q} && id -Gn {q} || true"


def parse_account_query(text: str) -> Account | None:
    lines = text.splitlines()
    return parse_account(lines[0], lines[1] if len(lines) > 1 else "") if lines else None


def parse_nginx_user(conf: str) -> str:
    """The `user` nginx's workers run as (nginx.conf's `user NAME [GROUP];`)."""
    m = re.search(r"^\s*user\s+([A-Za-z0-9_.-]+)", conf, flags=re.MULTILINE)
    return m.group(1) if m else "www-data"
