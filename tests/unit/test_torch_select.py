"""Which torch a host gets: a table of GPUs, drivers and images."""

from __future__ import annotations

import pytest

from bootstrap.facts import GpuInfo, PythonProbe
from bootstrap.torch_select import (
    TorchSelectError,
    covers,
    select_torch,
    torchvision_for,
)

CU121_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CU130_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")


def gpu(name: str, cap: tuple[int, int] | None, driver: str) -> GpuInfo:
    return GpuInfo(name, driver, cap, 16000)


def image(torch: str, cuda: str | None, archs: tuple[str, ...], available: bool) -> PythonProbe:
    return PythonProbe(
        python="/opt/conda/bin/python3",
        python_version="3.10.14",
        has_venv=True,
        torch=torch,
        torchvision="0.x",
        cuda=cuda,
        arch_list=archs,
        cuda_available=available,
    )


@pytest.mark.parametrize(
    ("archs", "cap", "expected"),
    [
        (CU121_ARCHS, (5, 2), True),  # sm_50 cubins run on sm_52
        (CU121_ARCHS, (8, 9), True),  # sm_86 cubins run on sm_89 (same major)
        (CU130_ARCHS, (5, 2), False),  # Maxwell dropped
        (CU130_ARCHS, (12, 1), True),
        (("sm_80", "compute_80"), (9, 0), True),  # PTX is JIT-compiled for newer GPUs
        (("sm_80",), (9, 0), False),  # cubins do not cross majors
        (("sm_90a",), (9, 0), False),  # arch-specific variants are not counted
        ((), (7, 5), False),
    ],
)
def test_covers(archs: tuple[str, ...], cap: tuple[int, int], expected: bool) -> None:
    assert covers(archs, cap) is expected


# (case, gpu, image torch, expected: "reuse" or the flavor to install)
CASES = [
    (
        "M60 with a CUDA 13 image: Maxwell needs cu126",
        gpu("Tesla M60", (5, 2), "580.82.07"),
        image("2.9.0+cu130", "13.0", CU130_ARCHS, False),
        "cu126",
    ),
    ("M60, driver 535, no torch", gpu("Tesla M60", (5, 2), "535.183.01"), None, "cu126"),
    ("T4, driver 580: newest build", gpu("Tesla T4", (7, 5), "580.65.06"), None, "cu130"),
    ("T4, driver 550: CUDA 13 needs >= 580", gpu("Tesla T4", (7, 5), "550.90.07"), None, "cu128"),
    (
        "T4 with a fitting cu121 image",
        gpu("Tesla T4", (7, 5), "535.104.05"),
        image("2.3.1+cu121", "12.1", CU121_ARCHS, True),
        "reuse",
    ),
    (
        "A10G image torch that cannot see the GPU",
        gpu("NVIDIA A10G", (8, 6), "550.1.1"),
        image("2.3.1+cu121", "12.1", CU121_ARCHS, False),
        "cu128",
    ),
    (
        "RTX 5090 (sm_120) with a cu121 image",
        gpu("RTX 5090", (12, 0), "575.51.3"),
        image("2.3.1+cu121", "12.1", CU121_ARCHS, True),
        "cu128",
    ),
    (
        "CUDA 13 image on a 550 driver",
        gpu("NVIDIA L4", (8, 9), "550.54.15"),
        image("2.9.0+cu130", "13.0", CU130_ARCHS, False),
        "cu128",
    ),
    (
        "CPU-only image torch on a GPU host",
        gpu("Tesla T4", (7, 5), "580.65.06"),
        image("2.5.0+cpu", None, (), False),
        "cu130",
    ),
    ("capability unknown: newest the driver allows", gpu("A100", None, "570.1.1"), None, "cu128"),
    ("no GPU, image torch", None, image("2.14.1+cu130", "13.0", CU130_ARCHS, False), "reuse"),
    ("no GPU, no torch", None, None, "cpu"),
]


@pytest.mark.parametrize(("case", "the_gpu", "the_image", "expected"), CASES, ids=[c[0] for c in CASES])
def test_select(case: str, the_gpu: GpuInfo | None, the_image: PythonProbe | None, expected: str) -> None:
    choice = select_torch(the_gpu, the_image)
    if expected == "reuse":
        assert choice.reuse_image and choice.build is None, choice.reason
    else:
        assert not choice.reuse_image and choice.build is not None, choice.reason
        assert choice.build.flavor == expected, choice.reason
    assert choice.device == ("cpu" if the_gpu is None else "cuda")


def test_index_url_per_flavor() -> None:
    choice = select_torch(gpu("Tesla M60", (5, 2), "535.1.1"), None)
    assert choice.index_url() == "https://download.pytorch.org/whl/cu126"
    assert choice.index_url("http://mirror.lan/torch/") == "http://mirror.lan/torch/cu126"


def test_driver_too_old_says_what_to_do() -> None:
    with pytest.raises(TorchSelectError, match="driver 470.82.01 is too old.*525"):
        select_torch(gpu("Tesla T4", (7, 5), "470.82.01"), None)


def test_gpu_too_old() -> None:
    with pytest.raises(TorchSelectError, match="sm_37.*older than any"):
        select_torch(gpu("Tesla K80", (3, 7), "535.1.1"), None)


def test_torchvision_pairing() -> None:
    assert torchvision_for("2.14.1") == "0.29.1"
    assert torchvision_for("2.6.0+cu126") == "0.21.0"
    with pytest.raises(ValueError):
        torchvision_for("1.13.1")
