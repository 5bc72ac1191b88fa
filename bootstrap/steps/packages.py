"""System packages: a JRE for TorchServe's frontend, nginx, nftables and venv support.

Deep-learning images often ship some of these; only what is missing is
installed, and what this step installed is recorded so undeploy can remove
exactly that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bootstrap.facts import HostFacts, parse_dpkg_status
from bootstrap.steps.base import DeployError, HostState, Run
from bootstrap.steps.step import Done, Footprint, Step

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


@dataclass(frozen=True)
class SystemPackages:
    """A JRE, nginx, nftables and venv support are installed."""


# nginx's stream module (a package of its own on Debian and Ubuntu): ACME's splitter on :443.
STREAM_MODULE = "libnginx-mod-stream"
# Debian's and Ubuntu's nginx packages that already depend on the stream module.
NGINX_WITH_STREAM = ("nginx-full", "nginx-extras")


def wanted_packages(
    facts: HostFacts, java_major: int | None, installed: dict[str, str], acme: bool = False
) -> list[str]:
    want = []
    if java_major is None or java_major < MIN_JAVA:
        want.append(JRE_PACKAGES[0])
    if "nginx" not in installed and "nginx-light" not in installed and "nginx-full" not in installed:
        want.append("nginx")
    if "nftables" not in installed:  # the firewall step's `nft`
        want.append("nftables")
    if acme and not any(p in installed for p in (STREAM_MODULE, *NGINX_WITH_STREAM)):
        want.append(STREAM_MODULE)
    python = facts.image_torch or (facts.pythons[0] if facts.pythons else None)
    if python is None:
        want.append("python3")
    if python is None or not python.has_venv:
        want.append("python3-venv")
    return want


def apply(run: Run, state: HostState) -> Done[SystemPackages]:
    if not run.facts.os.is_debian_like:
        raise DeployError(
            f"{run.facts.os.pretty_name} is not Debian/Ubuntu; this bootstrap installs with apt. "
            "Use a Debian or Ubuntu image (most GPU/deep-learning images are)."
        )
    java = run.conn.run("java -version", sudo=False, check=False)
    java_major = parse_java_version(java.stderr + java.stdout) if java.ok else None
    query = f"nginx nginx-light nginx-full nginx-extras {STREAM_MODULE} nftables python3-venv"
    dpkg = run.conn.run(f"dpkg -s {query}", check=False)
    missing = wanted_packages(run.facts, java_major, parse_dpkg_status(dpkg.stdout), run.options.acme)
    if not missing:
        return Done(False, "JRE, nginx, nftables and venv support present", SystemPackages())
    if not run.options.install_system_packages:
        raise DeployError(
            f"missing system packages: {', '.join(missing)}; install them on the host "
            "or allow the bootstrap to (install_system_packages)"
        )
    run.progress.status(f"installing {', '.join(missing)} with apt")
    # Debian's nginx starts its default site on install; the nginx step replaces it.
    res = run.conn.run(
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
    state.apt_installed = sorted(set(state.apt_installed) | set(missing))
    return Done(True, f"installed {', '.join(missing)}", SystemPackages())


STEP = Step(
    "packages",
    apply,
    Footprint(apt_packages=True),
    # It runs first, before `layout` has made the state's folder: what it installed is
    # written down with the next step's record.
    records_state=False,
)
