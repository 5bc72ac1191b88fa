"""Fact parsers against output recorded from real hosts."""

from __future__ import annotations

import json

from bootstrap.facts import (
    GpuInfo,
    HostFacts,
    OsInfo,
    PythonProbe,
    parse_compute_capability,
    parse_dpkg_status,
    parse_driver_version,
    parse_is_active,
    parse_is_enabled,
    parse_meminfo_mb,
    parse_nvidia_smi,
    parse_os_release,
    parse_torch_probe,
)
from bootstrap.files import parse_sha256sum

DEBIAN_12 = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""

UBUNTU_2204 = """\
PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
"""

AMAZON_LINUX = 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nID_LIKE="fedora"\n'


def test_os_release_debian() -> None:
    info = parse_os_release(DEBIAN_12)
    assert info == OsInfo("debian", "12", "Debian GNU/Linux 12 (bookworm)", ())
    assert info.is_debian_like


def test_os_release_ubuntu_is_debian_like() -> None:
    info = parse_os_release(UBUNTU_2204)
    assert (info.id, info.version_id, info.id_like) == ("ubuntu", "22.04", ("debian",))
    assert info.is_debian_like


def test_os_release_other_distribution() -> None:
    info = parse_os_release(AMAZON_LINUX)
    assert info.id == "amzn" and not info.is_debian_like
    assert info.pretty_name == "Amazon Linux"  # NAME when PRETTY_NAME is missing


# `nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total
#  --format=csv,noheader,nounits` on a g3s.xlarge (M60) and a 2xT4 box.
SMI_M60 = "Tesla M60, 535.183.01, 5.2, 8192\n"
SMI_2T4 = "Tesla T4, 550.90.07, 7.5, 15360\nTesla T4, 550.90.07, 7.5, 15360\n"
SMI_NA = "NVIDIA A100-SXM4-40GB, 470.82.01, [N/A], 40960\n"
SMI_OLD = "Tesla K80, 418.87.01, 11441\n"


def test_nvidia_smi_m60() -> None:
    assert parse_nvidia_smi(SMI_M60) == [GpuInfo("Tesla M60", "535.183.01", (5, 2), 8192)]


def test_nvidia_smi_several_gpus() -> None:
    gpus = parse_nvidia_smi(SMI_2T4)
    assert len(gpus) == 2 and all(g.capability == (7, 5) for g in gpus)


def test_nvidia_smi_capability_not_available() -> None:
    assert parse_nvidia_smi(SMI_NA)[0].capability is None


def test_nvidia_smi_old_driver_without_compute_cap() -> None:
    gpus = parse_nvidia_smi(SMI_OLD, with_capability=False)
    assert gpus == [GpuInfo("Tesla K80", "418.87.01", None, 11441)]


def test_nvidia_smi_empty() -> None:
    assert parse_nvidia_smi("") == []


def test_compute_capability() -> None:
    assert parse_compute_capability("8.6") == (8, 6)
    assert parse_compute_capability(" 12.0 ") == (12, 0)
    assert parse_compute_capability("[N/A]") is None


def test_driver_version_compares_numerically() -> None:
    assert parse_driver_version("580.65.06") >= (580, 65, 6)
    assert parse_driver_version("535.183.01") < (580,)
    assert parse_driver_version("1000.1") > parse_driver_version("999.99.99")


PROBE_CUDA = json.dumps(
    {
        "python": "/opt/conda/bin/python3",
        "python_version": "3.10.14",
        "venv": True,
        "torch": "2.3.1+cu121",
        "cuda": "12.1",
        "arch_list": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
        "cuda_available": True,
        "capability": [7, 5],
        "device_name": "Tesla T4",
        "torchvision": "0.18.1+cu121",
    }
)
PROBE_NO_TORCH = json.dumps(
    {
        "python": "/usr/bin/python3",
        "python_version": "3.11.2",
        "venv": False,
        "torch_error": "ModuleNotFoundError(\"No module named 'torch'\")",
    }
)


def test_torch_probe_with_warnings_before_the_json() -> None:
    text = "/usr/lib/python3/dist-packages/torch/cuda/__init__.py:118: UserWarning: ...\n"
    probe = parse_torch_probe(text + PROBE_CUDA + "\n")
    assert probe is not None and probe.has_torch
    assert probe.torch == "2.3.1+cu121" and probe.cuda == "12.1"
    assert probe.capability == (7, 5) and "sm_75" in probe.arch_list


def test_torch_probe_without_torch() -> None:
    probe = parse_torch_probe(PROBE_NO_TORCH)
    assert probe is not None and not probe.has_torch and not probe.has_venv
    assert "No module named" in (probe.error or "")


def test_torch_probe_garbage() -> None:
    assert parse_torch_probe("Segmentation fault\n") is None


def test_is_active_and_enabled() -> None:
    assert parse_is_active("active\n") == "active"
    assert parse_is_active("inactive\n") == "inactive"
    assert parse_is_active("failed\n") == "failed"
    assert parse_is_active("") == "unknown"
    assert parse_is_enabled("enabled\n") and not parse_is_enabled("disabled\n")
    assert not parse_is_enabled("")


def test_sha256sum() -> None:
    digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert parse_sha256sum(f"{digest}  /var/lib/synthdet/model-store/synthdet.mar\n") == digest
    # A backslash prefix marks a file name with special characters.
    assert parse_sha256sum(f"\\{digest}  /tmp/a\\nb\n") == digest
    assert parse_sha256sum("") is None
    assert parse_sha256sum("sha256sum: x: No such file or directory\n") is None


DPKG = """\
Package: nginx
Status: install ok installed
Priority: optional
Version: 1.22.1-9+deb12u1
Description: small, powerful, scalable web/proxy server
 Nginx ("engine X") is a high-performance web and reverse proxy server

Package: python3-venv
Status: deinstall ok config-files
Version: 3.11.2-1+b1
"""


def test_dpkg_status_installed_only() -> None:
    assert parse_dpkg_status(DPKG) == {"nginx": "1.22.1-9+deb12u1"}
    assert parse_dpkg_status("") == {}


def test_meminfo() -> None:
    assert parse_meminfo_mb("MemTotal:       24683572 kB\nMemFree: 1 kB\n") == 24105


def test_host_facts_summary() -> None:
    probe = parse_torch_probe(PROBE_CUDA)
    assert isinstance(probe, PythonProbe)
    facts = HostFacts(
        parse_os_release(UBUNTU_2204),
        "x86_64",
        4,
        16000,
        tuple(parse_nvidia_smi(SMI_2T4)),
        (probe,),
    )
    summary = facts.summary()
    assert summary["gpu"] == "Tesla T4" and summary["compute_capability"] == "7.5"
    assert summary["image_torch"] == "2.3.1+cu121"
    assert facts.image_torch is probe
