"""`synthdet doctor`: can this machine serve the model, and how fast?

What the original cuda_check.py did (is CUDA available) and what usually
goes wrong after it: a torch build without kernels for the GPU's compute
capability, a driver too old for the build, no Java for TorchServe.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata

import torch

from bootstrap.torch_select import covers


@dataclass
class Check:
    name: str
    value: str
    ok: bool | None = None  # None: informational
    hint: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    verdict: str = ""
    ready: bool = False
    gpu: bool = False


def _run(command: list[str]) -> str | None:
    if not shutil.which(command[0]):
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout + result.stderr).strip()


def java_version() -> int | None:
    output = _run(["java", "-version"])
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output or "")
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" means Java 8


def driver_version() -> str | None:
    output = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return output.splitlines()[0].strip() if output and output[0].isdigit() else None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def diagnose() -> Report:
    report = Report()
    add = report.checks.append
    add(Check("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"))
    cuda = torch.cuda.is_available()
    add(
        Check(
            "CUDA available",
            str(cuda),
            cuda or None,
            "" if cuda else "no usable GPU: inference runs on the CPU (~3 s per image)",
        )
    )
    gpu_ok = False
    if cuda:
        name = torch.cuda.get_device_name(0)
        capability = torch.cuda.get_device_capability(0)
        arch_list = torch.cuda.get_arch_list()
        gpu_ok = covers(arch_list, capability)
        add(Check("GPU", f"{name}, compute capability {capability[0]}.{capability[1]}"))
        add(
            Check(
                "torch kernels for this GPU",
                ", ".join(arch_list),
                gpu_ok,
                ""
                if gpu_ok
                else "install a torch build with kernels for this GPU "
                "(Maxwell sm_52 needs a CUDA 12.6 build)",
            )
        )
    add(Check("NVIDIA driver", driver_version() or "not found"))
    java = java_version()
    add(
        Check(
            "Java",
            str(java) if java else "not found",
            bool(java and java >= 11),
            ""
            if java and java >= 11
            else "TorchServe needs Java 11+: apt-get install openjdk-17-jre-headless",
        )
    )
    serve = package_version("torchserve")
    add(
        Check(
            "TorchServe",
            serve or "not installed",
            serve is not None,
            "" if serve else "pip install torchserve torch-model-archiver",
        )
    )
    add(
        Check(
            "torch-model-archiver",
            package_version("torch-model-archiver") or "not installed",
            package_version("torch-model-archiver") is not None,
        )
    )
    report.gpu = gpu_ok
    report.ready = all(check.ok is not False for check in report.checks)
    if report.ready and gpu_ok:
        report.verdict = "READY: GPU serving (about 0.1-0.3 s per image)"
    elif report.ready:
        report.verdict = "READY on CPU only: works, but about 3 s per image, beyond the app's 2 s timeout"
    else:
        report.verdict = "NOT READY: fix the items marked above"
    return report
