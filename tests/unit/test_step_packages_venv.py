"""The packages step and the venv step's parts (pip arguments, torch builds, the stamp)."""

from __future__ import annotations

import re

import pytest

from bootstrap.api import DeployOptions, PipSource
from bootstrap.facts import PythonProbe
from bootstrap.steps import packages, venv
from bootstrap.steps.base import DeployError, HostState
from bootstrap.torch_select import CUDA_BUILDS, TorchChoice
from tests.support.fake_host import FakeRunner, make_run


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.13" 2024-10-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("bash: java: command not found", None),
    ],
)
def test_java_version(text: str, major: int | None) -> None:
    assert packages.parse_java_version(text) == major


def dpkg_status(*installed: str) -> str:
    return "\n\n".join(f"Package: {name}\nStatus: install ok installed\nVersion: 1.0" for name in installed)


JAVA_17 = 'openjdk version "17.0.13" 2024-10-15\n'


@pytest.mark.parametrize(
    ("java", "dpkg", "allowed", "apt_rc", "outcome"),
    [
        # (java -version, dpkg -s, may install, apt's exit) -> what the step does
        ((0, "", JAVA_17), dpkg_status("nginx", "nftables"), True, 0, "nothing to do"),
        (
            (127, "", "java: not found"),
            dpkg_status("nginx"),
            True,
            0,
            "installs openjdk-17-jre-headless nftables",
        ),
        ((0, "", JAVA_17), "", False, 0, "refuses: missing system packages: nginx, nftables"),
        ((0, "", JAVA_17), dpkg_status("nftables"), True, 100, "fails: apt-get could not install nginx"),
    ],
    ids=["all there", "java and nftables missing", "not allowed to install", "apt fails"],
)
def test_packages_step(
    java: tuple[int, str, str], dpkg: str, allowed: bool, apt_rc: int, outcome: str
) -> None:
    host = FakeRunner().on(r"^java -version$", java).on(r"^dpkg -s ", (0 if dpkg else 1, dpkg, ""))
    host.on(r"apt-get .* install ", (apt_rc, "", "E: Unable to locate package" if apt_rc else ""))
    python = PythonProbe("/usr/bin/python3", "3.11.2", has_venv=True)
    run = make_run(host=host, options=DeployOptions(install_system_packages=allowed), pythons=(python,))
    state = HostState()
    verb, _, detail = outcome.partition(" ")
    if verb in ("refuses:", "fails:"):
        with pytest.raises(DeployError, match=re.escape(detail)):
            packages.apply(run, state)
        assert state.apt_installed == []
        return
    result = packages.apply(run, state)
    installs = host.ran(r"apt-get .* install ")
    if verb == "nothing":
        assert not result.changed and not installs
        return
    # One apt run, non-interactive, waiting for apt's lock instead of failing on it.
    (command,) = installs
    assert "DEBIAN_FRONTEND=noninteractive" in command and "DPkg::Lock::Timeout=" in command
    assert command.endswith("--no-install-recommends " + detail)
    assert result.changed and state.apt_installed == sorted(detail.split())  # undeploy purges these


def test_wanted_packages() -> None:
    with_venv = PythonProbe("/usr/bin/python3", "3.11.2", has_venv=True)
    facts = make_run(pythons=(with_venv,)).facts
    assert packages.wanted_packages(facts, 17, {"nginx": "1.22", "nftables": "1.0"}) == []
    assert packages.wanted_packages(facts, 8, {}) == ["openjdk-17-jre-headless", "nginx", "nftables"]
    bare = make_run(pythons=(PythonProbe("/usr/bin/python3", "3.11.2", has_venv=False),)).facts
    assert packages.wanted_packages(bare, 17, {"nginx-light": "1", "nftables": "1"}) == ["python3-venv"]


def test_pip_args() -> None:
    assert venv.pip_args(PipSource()) == []
    assert venv.pip_args(PipSource(index_url="https://mirror/simple")) == [
        "--index-url",
        "https://mirror/simple",
    ]
    # A wheelhouse alone: no index at all (a locked-down host must not try PyPI).
    assert venv.pip_args(PipSource(find_links="http://10.0.0.1:8000/", trusted_hosts=("10.0.0.1",))) == [
        "--no-index",
        "--find-links",
        "http://10.0.0.1:8000/",
        "--trusted-host",
        "10.0.0.1",
    ]


def test_torch_install_args() -> None:
    cu126 = next(b for b in CUDA_BUILDS if b.flavor == "cu126")
    choice = TorchChoice(False, "cuda", cu126, "M60")
    assert venv.torch_install_args(DeployOptions(), choice) == [
        "torch",
        "torchvision",
        "--index-url",
        "https://download.pytorch.org/whl/cu126",
    ]
    pinned = DeployOptions(torch_version="2.7.1", torch_index_url="http://m/whl")
    assert venv.torch_install_args(pinned, choice) == [
        "torch==2.7.1",
        "torchvision==0.22.1",
        "--index-url",
        "http://m/whl/cu126",
    ]
    # A wheelhouse given and no torch index: torch must come from the wheelhouse.
    closed = DeployOptions(pip=PipSource(find_links="/wheels"))
    assert venv.torch_install_args(closed, choice)[:3] == ["torch", "torchvision", "--no-index"]


def test_venv_stamp_changes_with_inputs() -> None:
    options = DeployOptions()
    reuse = TorchChoice(True, "cpu", None, "image torch")
    base = venv.stamp_for(options, reuse, "/usr/bin/python3", "torchserve==0.12.0\n")
    assert base == venv.stamp_for(options, reuse, "/usr/bin/python3", "torchserve==0.12.0\n")
    assert base != venv.stamp_for(options, reuse, "/usr/bin/python3", "torchserve==0.13.0\n")
    assert base != venv.stamp_for(options, reuse, "/opt/conda/bin/python3", "torchserve==0.12.0\n")
