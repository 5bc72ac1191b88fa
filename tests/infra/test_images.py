"""The boot image per cloud and GPU: its driver must drive the GPU, and a torch build
with kernels for it must run on that driver."""

from __future__ import annotations

import dataclasses

import pytest

from bootstrap import torch_select
from infra.images import (
    GCP_IMAGE_PROJECT,
    GPUS,
    IMAGES,
    TORCH_BUILD_MIN_CAPABILITY,
    TORCH_BUILD_MIN_DRIVER_BRANCH,
    ImageSelectError,
    check_choice,
    select_image,
    supported_gpus,
)


@pytest.mark.parametrize("key", sorted(IMAGES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_row_is_consistent(key):
    assert check_choice(IMAGES[key]) == []


def test_the_stacks_gpus_are_covered():
    assert supported_gpus("gcp") == ["t4"]
    assert supported_gpus("aws") == ["m60", "t4"]


def test_gcp_t4_uses_a_current_deep_learning_vm_family():
    choice = select_image("gcp", "t4")
    assert choice.gcp_project == GCP_IMAGE_PROJECT == "deeplearning-platform-release"
    family = choice.gcp_family or ""
    # A CUDA 12.x family with an R580 driver: supports the T4 (sm_75) and the image's torch.
    assert "cu12" in family and family.endswith("nvidia-580")
    assert choice.driver_branch >= 580
    assert choice.source == f"projects/deeplearning-platform-release/global/images/family/{family}"


def test_m60_gets_a_proprietary_driver_line_and_a_maxwell_torch_build():
    choice = select_image("aws", "m60")
    m60 = GPUS["m60"]
    assert m60.capability == (5, 2)
    assert "Proprietary" in (choice.ami_name or "") and "OSS" not in (choice.ami_name or "")
    assert not choice.open_kernel_modules  # open modules need Turing or newer
    assert choice.driver_branch <= (m60.last_driver_branch or 0)
    assert choice.torch_build == "cu126"
    assert choice.ami_include_deprecated  # the pinned line no longer gets releases
    assert choice.ami_owners == ("amazon",)


def test_aws_t4_uses_a_current_line():
    choice = select_image("aws", "t4")
    assert "OSS Nvidia Driver" in (choice.ami_name or "")
    assert "Ubuntu 22.04" in (choice.ami_name or "")
    assert not choice.ami_include_deprecated


def test_unknown_gpu_is_refused_with_the_alternatives():
    with pytest.raises(ImageSelectError, match="supported are"):
        select_image("gcp", "m60")


# What would be wrong: each broken variant of the M60 row is caught.
@pytest.mark.parametrize(
    "change, problem",
    [
        ({"open_kernel_modules": True, "driver_branch": 580}, "cannot drive"),
        ({"driver_branch": 590}, "cannot drive"),
        ({"torch_build": "cu128"}, "does not fit"),
        ({"torch_build": "cu130", "driver_branch": 580}, "does not fit"),
        ({"torch_build": "cu126", "driver_branch": 470}, "does not fit"),
    ],
)
def test_broken_m60_rows_are_caught(change, problem):
    broken = dataclasses.replace(IMAGES[("aws", "m60")], **change)
    assert any(problem in p for p in check_choice(broken))


def test_t4_row_with_a_maxwell_only_assumption_still_fits():
    # cu126 also has sm_75 kernels: falling back to it on a T4 is fine.
    row = dataclasses.replace(IMAGES[("aws", "t4")], torch_build="cu126")
    assert check_choice(row) == []


# The image table and the bootstrap's torch table must tell the same story.
@pytest.mark.parametrize("flavor", ["cu126", "cu128", "cu130"])
def test_torch_build_facts_match_the_bootstrap(flavor):
    build = next(b for b in torch_select.CUDA_BUILDS if b.flavor == flavor)
    for gpu in GPUS.values():
        expected = gpu.capability >= TORCH_BUILD_MIN_CAPABILITY[flavor]
        assert torch_select.covers(build.archs, gpu.capability) == expected, (flavor, gpu.key)
    assert build.min_driver[0] == TORCH_BUILD_MIN_DRIVER_BRANCH[flavor]


@pytest.mark.parametrize("key", sorted(IMAGES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_bootstrap_would_pick_a_build_for_each_row(key):
    """Feed the row's GPU and driver to the bootstrap's selector: it must find a CUDA build."""
    from bootstrap.facts import GpuInfo

    choice = IMAGES[key]
    gpu = GPUS[choice.gpu]
    info = GpuInfo(gpu.name, f"{choice.driver_branch}.100.01", gpu.capability)
    picked = torch_select.select_torch(info, None)
    assert picked.device == "cuda"
    assert picked.build is not None
    assert torch_select.covers(picked.build.archs, gpu.capability)
