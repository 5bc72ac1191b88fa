"""System packages: a JRE for TorchServe's frontend, nginx, nftables and venv support.

Deep-learning images often ship some of these; only what is missing is
installed, and what this step installed is recorded so undeploy can remove
exactly that.
"""

from __future__ import annotations

import re

from bootstrap.facts import parse_dpkg_status
from bootstrap.steps.base import Context, DeployError, StepResult

NAME = "packages"
# TorchServe 0.12 needs Java 11 or newer.
MIN_JAVA = 11
JRE_PACKAGES = ("openjdk-17-jre-headless", "default-jre-headless")


def parse_java_version(text: str) -> int | None:
    """`java -version` (stderr): 'openjdk version "17.0.13" ...' -> 17; '"1.8.0_392"' -> 8."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def wanted_packages(ctx: Context, java_major: int | None, installed: dict[str, str]) -> list[str]:
    want = []
    if java_major is None or java_major < MIN_JAVA:
        want.append(JRE_PACKAGES[0])
    if "nginx" not in installed and "nginx-light" not in installed and "nginx-full" not in installed:
        want.append("nginx")
    if "nftables" not in installed:  # the firewall step's `nft`
        want.append("nftables")
    python = ctx.facts.image_torch or (ctx.facts.pythons[0] if ctx.facts.pythons else None)
    if python is None:
        want.append("python3")
    if python is None or not python.has_venv:
        want.append("python3-venv")
    return want


def apply(ctx: Context) -> StepResult:
    if not ctx.facts.os.is_debian_like:
        raise DeployError(
            f"{ctx.facts.os.pretty_name} is not Debian/Ubuntu; this bootstrap installs with apt. "
            "Use a Debian or Ubuntu image (most GPU/deep-learning images are)."
        )
    java = ctx.conn.run("java -version", sudo=False, check=False)
    java_major = parse_java_version(java.stderr + java.stdout) if java.ok else None
    dpkg = ctx.conn.run("dpkg -s nginx nginx-light nginx-full nftables python3-venv", check=False)
    missing = wanted_packages(ctx, java_major, parse_dpkg_status(dpkg.stdout))
    if not missing:
        return StepResult(NAME, False, "JRE, nginx, nftables and venv support present")
    if not ctx.options.install_system_packages:
        raise DeployError(
            f"missing system packages: {', '.join(missing)}; install them on the host "
            "or allow the bootstrap to (install_system_packages)"
        )
    ctx.progress.status(f"installing {', '.join(missing)} with apt")
    # Debian's nginx starts its default site on install; the nginx step replaces it.
    res = ctx.conn.run(
        "export DEBIAN_FRONTEND=noninteractive; "
        "apt-get -o DPkg::Lock::Timeout=300 update -q && "
        "apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends " + " ".join(missing),
        check=False,
        timeout_s=1800,
    )
    if not res.ok:
        raise DeployError(
            f"apt-get could not install {', '.join(missing)} (exit {res.rc}): "
            f"{(res.stderr or res.stdout).strip()[-600:]}\nCheck the host's apt sources "
            "and network, or preinstall these packages in the image."
        )
    ctx.state.apt_installed = sorted(set(ctx.state.apt_installed) | set(missing))
    return StepResult(NAME, True, f"installed {', '.join(missing)}")
