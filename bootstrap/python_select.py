"""Which Python the service venv is built from.

The handler needs Python >= 3.10 (zip(strict=True), `X | Y` types) and the
torch builds old GPUs need (cu126 for the Tesla M60) have no wheels for the
Python 3.8 of Ubuntu 20.04, the last image line whose driver supports
Maxwell. The policy, in order:

1. `--python PATH` (DeployOptions.python): that interpreter, or an error.
2. The image's Python (the one with torch first, then python3) when >= 3.10;
   its torch is reused when torch_select says it fits (unchanged behaviour).
3. An installed python3.12 / python3.11 / python3.10 (or one uv installed
   on an earlier run under /opt/synthdet/python).
4. apt: python3.X + python3.X-venv where the distribution has them (Ubuntu
   22.04, Debian 12; not Ubuntu 20.04, which would need the deadsnakes PPA:
   a third-party source this bootstrap does not add on its own).
5. uv: `pip install uv` from the configured package index, then
   `uv python install 3.11` into /opt/synthdet/python. uv downloads
   python-build-standalone from GitHub, or from UV_PYTHON_INSTALL_MIRROR when
   that is set where `synthdet deploy` runs.

A Python other than the image's torch Python cannot reuse that torch: the
caller then installs the build torch_select names for the GPU.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from bootstrap.facts import (
    HostFacts,
    HostPython,
    PythonProbe,
    interpreter_query,
    parse_apt_candidates,
    parse_interpreters,
)
from bootstrap.steps.base import OPT_DIR, DeployError, HostState, Run

MIN_VERSION = (3, 10)
# Looked up on PATH, newest first (all have torch and TorchServe wheels).
HOST_VERSIONS = ("3.12", "3.11", "3.10")
# What uv installs: the newest our pinned stack is tested with.
UV_VERSION = "3.11"
# uv-managed interpreters live under /opt/synthdet (readable by the service
# user, removed by undeploy), not in root's home.
PYTHON_DIR = f"{OPT_DIR}/python"
UV_DIR = f"{OPT_DIR}/uv"
# uv's own variable: a mirror of python-build-standalone's release downloads.
MIRROR_ENV = "UV_PYTHON_INSTALL_MIRROR"
UV_READY = "SYNTHDET-UV-READY"


@dataclass(frozen=True)
class SelectedPython:
    path: str
    version: str
    # Where it came from, for the step's detail line: image, --python, host, apt, uv.
    source: str
    # The image's torch Python when `path` is that interpreter: only then can
    # its torch be reused (--system-site-packages).
    image_torch: PythonProbe | None = None


def supported(version: tuple[int, ...]) -> bool:
    return len(version) >= 2 and version[:2] >= MIN_VERSION


def version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version)) or "unknown"


def host_candidates() -> tuple[str, ...]:
    """Names interpreter_query looks for: PATH first, then what uv installed earlier."""
    return (*(f"python{v}" for v in HOST_VERSIONS), f"{PYTHON_DIR}/cpython-3*/bin/python3")


# ----------------------------------------------------------------- policy
def from_image(facts: HostFacts) -> SelectedPython | None:
    """The image's Python (torch's first, as facts sort them) when it is new enough.

    No probe at all (python3 missing when facts were read, installed by the
    packages step since) keeps the old behaviour: `python3`, checked by pip.
    """
    if not facts.pythons:
        return SelectedPython("python3", "unknown", "image")
    for probe in facts.pythons:
        if supported(probe.version):
            torch = probe if probe.has_torch else None
            return SelectedPython(probe.python, probe.python_version, "image", torch)
    return None


def pick_host(found: list[HostPython]) -> HostPython | None:
    """The first supported interpreter that can make a venv."""
    return next((p for p in found if supported(p.version) and p.has_venv), None)


def from_override(facts: HostFacts, path: str, found: list[HostPython]) -> SelectedPython:
    """--python PATH: exactly that interpreter, or say why not."""
    probe = found[0] if found else None
    if probe is None:
        raise DeployError(
            f"--python {path}: no such interpreter on the host (or it does not run). "
            "Give the absolute path of a Python >= 3.10."
        )
    if not supported(probe.version):
        raise DeployError(
            f"--python {path} is Python {version_text(probe.version)}; the service needs >= "
            f"{version_text(MIN_VERSION)}."
        )
    if not probe.has_venv:
        raise DeployError(
            f"--python {path} cannot create a venv (no venv/ensurepip module); install its "
            f"venv package (e.g. python{probe.version[0]}.{probe.version[1]}-venv)."
        )
    # Reuse the image's torch only when this is the very interpreter that has it.
    torch = next((p for p in facts.pythons if p.has_torch and p.python in (path, probe.path)), None)
    return SelectedPython(probe.path, version_text(probe.version), "--python", torch)


def too_old_error(facts: HostFacts, tried: list[str]) -> DeployError:
    """What went wrong and what to do, when no supported Python could be had."""
    image = facts.image_torch or (facts.pythons[0] if facts.pythons else None)
    have = f"host Python {image.python_version} ({image.python})" if image else "the host's Python"
    return DeployError(
        f"{have} is too old: the service needs Python >= {version_text(MIN_VERSION)}. "
        f"Tried: {'; '.join(tried)}. Install python3.11 (with its venv module) on the image, "
        f"pass --python /path/to/python3.11, or let the host reach the internet (or set "
        f"{MIRROR_ENV} to a python-build-standalone mirror) so uv can download one."
    )


# ------------------------------------------------------------ on the host
def find_on_host(run: Run, names: tuple[str, ...]) -> list[HostPython]:
    res = run.conn.run(interpreter_query(names), sudo=False, check=False)
    return parse_interpreters(res.stdout)


class NotInstalled(DeployError):
    """One way of getting a Python did not work; the message says why."""


def try_apt(run: Run, state: HostState) -> None:
    """Install python3.X-venv from the distribution when it has one, or raise NotInstalled."""
    if not run.facts.os.is_debian_like:
        raise NotInstalled(f"apt: {run.facts.os.pretty_name} is not Debian/Ubuntu")
    if not run.options.install_system_packages:
        raise NotInstalled("apt: not allowed (install_system_packages is off)")
    wanted = [f"python{v}-venv" for v in HOST_VERSIONS]
    apt = "apt-get -o DPkg::Lock::Timeout=300"
    # Cloud images often boot with empty package lists: update before asking.
    policy = run.conn.run(
        f"export DEBIAN_FRONTEND=noninteractive; {apt} update -q >/dev/null 2>&1; "
        f"apt-cache policy {' '.join(wanted)}",
        check=False,
        timeout_s=600,
    )
    candidates = parse_apt_candidates(policy.stdout)
    package = next((p for p in wanted if p in candidates), None)
    if package is None:
        raise NotInstalled(f"apt: {run.facts.os.pretty_name} has no {'/'.join(wanted)}")
    interpreter = package.removesuffix("-venv")
    run.progress.status(f"installing {interpreter} with apt (the image's Python is too old)")
    res = run.conn.run(
        f"export DEBIAN_FRONTEND=noninteractive; {apt} install -y -q --no-install-recommends "
        f"{interpreter} {package}",
        check=False,
        timeout_s=1800,
    )
    if not res.ok:
        raise NotInstalled(f"apt: installing {package} failed: {(res.stderr or res.stdout).strip()[-300:]}")
    # Recorded so undeploy removes it like the other packages deploy installed.
    state.apt_installed = sorted({*state.apt_installed, interpreter, package})


def uv_install_script(
    pip_args: list[str], base_python: str, uv_dir: str = UV_DIR, python_dir: str = PYTHON_DIR
) -> str:
    """Shell: get uv (PATH, or pip into a small venv under /opt/synthdet), install Python."""
    q = shlex.quote
    pip = " ".join(q(a) for a in pip_args)
    py = q(base_python)
    return "\n".join(
        [
            "set -e",
            "uv=$(command -v uv || true)",
            f'if [ -z "$uv" ] && [ ! -x {uv_dir}/bin/uv ]; then',
            # A venv needs python3-venv; without it pip --target puts uv in the same bin/.
            f"  rm -rf {uv_dir}",
            f"  if {py} -m venv {uv_dir} >/dev/null 2>&1; then",
            f"    {uv_dir}/bin/python -m pip install --disable-pip-version-check -q {pip} uv",
            "  else",
            f"    rm -rf {uv_dir}",
            f"    {py} -m pip install --disable-pip-version-check -q --target {uv_dir} {pip} uv",
            "  fi",
            "fi",
            f'[ -n "$uv" ] || uv={uv_dir}/bin/uv',
            # Tells a package-index failure from a download failure (try_uv).
            f"echo {UV_READY}",
            f'"$uv" python install {UV_VERSION}',
            # The service user runs it: a hardened umask (027) must not hide it.
            f"chmod -R a+rX {python_dir}",
        ]
    )


def uv_env(python_dir: str = PYTHON_DIR) -> dict[str, str]:
    """Where uv puts interpreters (and their bin links), plus the mirror if one is set here."""
    env = {"UV_PYTHON_INSTALL_DIR": python_dir, "UV_PYTHON_BIN_DIR": f"{python_dir}/bin"}
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        env[MIRROR_ENV] = mirror
    return env


def try_uv(run: Run, pip_args: list[str]) -> None:
    """Install Python with uv, or raise NotInstalled (uv needs PyPI/a mirror, then GitHub/a mirror)."""
    base = run.facts.pythons[0].python if run.facts.pythons else "python3"
    run.progress.status(f"installing Python {UV_VERSION} with uv into {PYTHON_DIR}")
    env = uv_env()
    res = run.conn.run(uv_install_script(pip_args, base), check=False, timeout_s=1200, env=env)
    if res.ok:
        return
    tail = (res.stderr or res.stdout).strip()[-700:]
    if UV_READY not in res.stdout:
        raise NotInstalled(
            "uv: could not pip-install uv from the package index (check --pip-index-url / "
            f"--pip-find-links): {tail}"
        )
    source = f"the mirror {env[MIRROR_ENV]}" if MIRROR_ENV in env else "GitHub (no internet?)"
    raise NotInstalled(
        f"uv: could not download Python {UV_VERSION} (python-build-standalone) from {source}: {tail}"
    )


def resolve(run: Run, state: HostState, pip_args: list[str]) -> SelectedPython:
    """The interpreter for the service venv, installing one if the image's is too old."""
    facts = run.facts
    if run.options.python:
        probes = find_on_host(run, (shlex.quote(run.options.python),))
        return from_override(facts, run.options.python, probes)
    image = from_image(facts)
    if image is not None:
        return image
    # Already there: python3.11 on the image, or what apt/uv installed on an earlier run.
    found = pick_host(find_on_host(run, host_candidates()))
    if found is not None:
        origin = "uv" if found.path.startswith(f"{PYTHON_DIR}/") else "host"
        return SelectedPython(found.path, version_text(found.version), origin)
    tried = [f"no python{'/'.join(HOST_VERSIONS)} with venv support on the host"]
    installers: tuple[tuple[str, Callable[[], None]], ...] = (
        ("apt", lambda: try_apt(run, state)),
        ("uv", lambda: try_uv(run, pip_args)),
    )
    for source, install in installers:
        try:
            install()
        except NotInstalled as exc:
            tried.append(str(exc))
            continue
        found = pick_host(find_on_host(run, host_candidates()))
        if found is not None:
            return SelectedPython(found.path, version_text(found.version), source)
        tried.append(f"{source}: installed, but found no usable Python >= 3.10 after it")
    raise too_old_error(facts, tried)
