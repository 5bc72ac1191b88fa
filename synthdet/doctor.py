"""`synthdet doctor`: can this machine serve the model, and how fast?

What the original cuda_check.py did (is CUDA available) and what usually
goes wrong after it: a torch build without kernels for the GPU's compute
capability, a driver too old for the build, no Java for TorchServe. The
speed is measured here, not quoted: one app-sized frame through the very
handler TorchServe runs, with an untrained model of the same size.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from bootstrap.torch_select import covers
from handler.cpu_features import CpuFeatures, detect
from serving.contract import APP_TIMEOUT_S, make_test_jpeg
from serving.settings import ServingSettings

# The frame doctor times: what a 4:3 tablet running the app sends.
FRAME_SIZE = (1280, 960)


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
    # Seconds for one app frame through the handler here (None: not measured).
    frame_s: float | None = None
    cpu: CpuFeatures | None = None


CHECK_BF16 = (
    "its detections move beyond float rounding: check the match rate on YOUR model first "
    "(benchmarks/bench_inprocess.py --checkpoint YOUR.pth)"
)


def cpu_advice(cpu: CpuFeatures) -> tuple[str, str]:
    """(the precision a CPU worker uses here, what to try): the measured per-CPU advice
    (docs/performance.md)."""
    default = "fp32, exact (the default)"
    if cpu.capability == "amx_bf16":
        return default, f"AMX: `--precision bf16` measured 2.3x faster than fp32 on 2 cores, but {CHECK_BF16}"
    if cpu.native_bf16:
        return default, (
            f"AVX512_BF16 without AMX: `--precision bf16` may be faster (not measured here: "
            f"compare it with fp32 on this CPU), and {CHECK_BF16}"
        )
    if cpu.native_bf16 is None:
        return default, "could not read this CPU's flags: stay on fp32"
    return default, f"no native bf16 ({cpu.capability}): bf16 would be emulated, slower: stay on fp32"


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


def measure_frame_seconds(repeats: int = 2) -> float:
    """Seconds one 1280x960 app frame takes through the handler on this machine (best of N).

    An untrained checkpoint has exactly the compute of a trained one.
    """
    from synthdet.demo_model import write_demo_checkpoint
    from synthdet.inprocess import load_in_process

    frame = make_test_jpeg(*FRAME_SIZE)
    with tempfile.TemporaryDirectory(prefix="synthdet-doctor-") as tmp:
        checkpoint = write_demo_checkpoint(Path(tmp) / "untrained.pth")
        serving = ServingSettings(warmup_sizes=(FRAME_SIZE,))
        with load_in_process(checkpoint, serving=serving) as model:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model.predict(frame)
                times.append(time.perf_counter() - started)
    return min(times)


def diagnose(measure: bool = True) -> Report:
    report = Report()
    add = report.checks.append
    add(Check("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"))
    cuda = torch.cuda.is_available()
    add(
        Check(
            "CUDA available",
            str(cuda),
            cuda or None,
            "" if cuda else "no usable GPU: inference runs on the CPU (speed measured below)",
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
    report.cpu = detect()
    add(Check("CPU", report.cpu.describe()))
    if not gpu_ok:  # the model runs on this CPU: which precision, and what to try
        precision, advice = cpu_advice(report.cpu)
        add(Check("CPU precision", precision, None, advice))
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
    if measure and (gpu_ok or not cuda):
        report.frame_s = measure_frame_seconds()
        fits = report.frame_s < APP_TIMEOUT_S
        add(
            Check(
                "one 1280x960 frame",
                f"{report.frame_s * 1000:.0f} ms on {'the GPU' if gpu_ok else 'the CPU'} (measured now)",
                fits or None,
                "" if fits else f"beyond the app's {APP_TIMEOUT_S:.0f} s timeout: serve from a GPU",
            )
        )
    report.verdict = verdict(report)
    return report


def verdict(report: Report) -> str:
    speed = (
        f"{report.frame_s * 1000:.0f} ms per frame here"
        if report.frame_s is not None
        else "speed not measured"
    )
    if not report.ready:
        return "NOT READY: fix the items marked above"
    if report.gpu:
        return f"READY: GPU serving ({speed})"
    if report.frame_s is None:
        return (
            f"READY on CPU only ({speed}; without --quick doctor times one frame): CPUs usually "
            f"take longer than the app's {APP_TIMEOUT_S:.0f} s timeout; self-host on a GPU for live use"
        )
    return (
        f"READY on CPU only ({speed}): it works, but a frame takes longer than the app's "
        f"{APP_TIMEOUT_S:.0f} s timeout; self-host on a GPU for live use"
        if report.frame_s >= APP_TIMEOUT_S
        else f"READY on CPU ({speed})"
    )
