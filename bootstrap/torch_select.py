"""Which PyTorch the service runs: the image's own, or a build that fits the GPU.

Two things decide whether a CUDA build of torch runs on a host:
- the GPU's compute capability must be covered by the build's kernels
  (`torch.cuda.get_arch_list()`): a cubin for sm_XY runs on any sm_XZ with
  Z >= Y (same major), PTX (compute_XY) is JIT-compiled for any newer GPU;
- the driver must be new enough for the build's CUDA runtime (CUDA 13 needs
  >= 580; any CUDA 12.x runs on >= 525.60.13 through minor-version
  compatibility).

Maxwell (e.g. Tesla M60, sm_52) and Pascal are only in the CUDA 12.6 builds;
CUDA 12.8+/13 dropped them. The table below is what download.pytorch.org
ships for recent releases; the choice is a pure function, unit-tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bootstrap.facts import GpuInfo, PythonProbe, parse_driver_version

DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl"


class TorchSelectError(RuntimeError):
    """No torch build can drive this GPU with this driver; the message says what to do."""


@dataclass(frozen=True)
class TorchBuild:
    flavor: str  # the wheel index / local version label: cu130, cu128, cu126, cpu
    cuda: tuple[int, int] | None
    min_driver: tuple[int, ...]
    archs: tuple[str, ...]


# Newest first: the first build that fits wins.
CUDA_BUILDS: tuple[TorchBuild, ...] = (
    TorchBuild(
        "cu130",
        (13, 0),
        (580, 65, 6),
        ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_110", "sm_120", "compute_120"),
    ),
    TorchBuild(
        "cu128",
        (12, 8),
        (525, 60, 13),
        ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"),
    ),
    TorchBuild(
        "cu126",
        (12, 6),
        (525, 60, 13),
        ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
    ),
)
CPU_BUILD = TorchBuild("cpu", None, (), ())

# The driver a CUDA runtime needs (minor-version compatibility for 12.x/11.x),
# to judge an image's torch by its `torch.version.cuda`.
_CUDA_MIN_DRIVER: dict[int, tuple[int, ...]] = {
    13: (580, 65, 6),
    12: (525, 60, 13),
    11: (450, 80, 2),
}


@dataclass(frozen=True)
class TorchChoice:
    reuse_image: bool
    device: Literal["cuda", "cpu"]
    build: TorchBuild | None  # what to install; None when reusing the image's torch
    reason: str

    def index_url(self, base: str = DEFAULT_TORCH_INDEX) -> str | None:
        return None if self.build is None else f"{base.rstrip('/')}/{self.build.flavor}"


def _arch_number(arch: str) -> tuple[str, int, int] | None:
    """'sm_86' -> ('sm', 8, 6); 'compute_90' -> ('compute', 9, 0); 'sm_90a' -> None."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)", arch)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def covers(arch_list: tuple[str, ...] | list[str], capability: tuple[int, int]) -> bool:
    """Whether kernels in `arch_list` run on a GPU of this compute capability."""
    major, minor = capability
    for arch in arch_list:
        parsed = _arch_number(arch)
        if parsed is None:
            continue  # arch-specific variants (sm_90a) only run on exactly that GPU
        kind, a_major, a_minor = parsed
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def driver_ok(driver: str, minimum: tuple[int, ...]) -> bool:
    return parse_driver_version(driver) >= minimum


def _cuda_major(cuda: str | None) -> int | None:
    m = re.match(r"(\d+)", cuda or "")
    return int(m.group(1)) if m else None


def select_torch(gpu: GpuInfo | None, image: PythonProbe | None) -> TorchChoice:
    """Reuse the image's torch when it fits, else name the build to install."""
    if gpu is None:
        if image is not None and image.has_torch:
            why = f"no GPU; the image's torch {image.torch} runs on CPU"
            return TorchChoice(True, "cpu", None, why)
        return TorchChoice(False, "cpu", CPU_BUILD, "no GPU and no torch in the image: CPU build")

    cap = gpu.capability
    cap_text = f"sm_{cap[0]}{cap[1]}" if cap else "unknown compute capability"
    if image is not None and image.has_torch and image.cuda:
        major = _cuda_major(image.cuda)
        need = _CUDA_MIN_DRIVER.get(major or 0)
        fits_arch = cap is not None and covers(image.arch_list, cap)
        fits_driver = need is not None and driver_ok(gpu.driver_version, need)
        if fits_arch and fits_driver and image.cuda_available:
            return TorchChoice(
                True,
                "cuda",
                None,
                f"the image's torch {image.torch} (CUDA {image.cuda}) has kernels for {cap_text}",
            )

    for build in CUDA_BUILDS:
        if not driver_ok(gpu.driver_version, build.min_driver):
            continue
        if cap is None or covers(build.archs, cap):
            why = f"{gpu.name} ({cap_text}), driver {gpu.driver_version}: {build.flavor} build"
            if image is not None and image.has_torch:
                why += f" (the image's torch {image.torch} does not fit)"
            return TorchChoice(False, "cuda", build, why)

    if cap is not None and not any(covers(b.archs, cap) for b in CUDA_BUILDS):
        raise TorchSelectError(
            f"{gpu.name} ({cap_text}) is older than any current PyTorch CUDA build supports "
            "(oldest: sm_50 in the CUDA 12.6 builds). Use a newer GPU type."
        )
    oldest = min(b.min_driver for b in CUDA_BUILDS)
    raise TorchSelectError(
        f"NVIDIA driver {gpu.driver_version} is too old for any PyTorch build that supports "
        f"{gpu.name} ({cap_text}); install driver >= {'.'.join(map(str, oldest))} "
        "(>= 580 for CUDA 13 builds) or use an image with a newer driver."
    )


def torchvision_for(torch_version: str) -> str:
    """torchvision's release paired with a torch release (0.(minor+15) for torch 2.x)."""
    m = re.match(r"2\.(\d+)\.(\d+)", torch_version)
    if not m:
        raise ValueError(f"cannot pair torchvision with torch {torch_version!r}")
    return f"0.{int(m.group(1)) + 15}.{m.group(2)}"
