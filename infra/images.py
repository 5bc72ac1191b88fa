"""Which boot image each cloud host gets, per GPU: the driver must drive the GPU.

The bootstrap picks the torch build on the host from what it finds there
(`bootstrap/torch_select.py`); this table picks the image so that such a build
exists at all. Three facts decide it:

- NVIDIA's data-center driver branches up to R580 support Maxwell (Tesla M60,
  sm_52); later branches drop Maxwell, Pascal and Volta.
- NVIDIA's open kernel modules ("OSS" drivers) only support Turing and newer.
  AWS's "OSS Nvidia Driver" DLAMIs therefore never supported G3 (M60) or P3;
  the "Proprietary Nvidia Driver" lines did, and current releases of every
  Ubuntu DLAMI list only G4dn and newer.
- Among PyTorch's CUDA builds only cu126 still carries Maxwell kernels (sm_50,
  which runs on sm_52); cu128/cu129/cu130 start at sm_75 (Turing: the T4).

So: the M60 gets the last Ubuntu DLAMI line with a proprietary (R535-class)
driver plus torch cu126; the T4 gets a current image (R580+ driver) and
whatever current torch build fits the driver. The table is data, so a test
can check every row against those rules.

Without a GPU (`synthdet:gpu: none`, the CPU stacks) there is no driver to
match: the host boots the cloud's plain Debian 12 image (the OS the bootstrap's
test hosts run) and the bootstrap installs PyTorch's CPU build there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Cloud = Literal["gcp", "aws"]

GCP_IMAGE_PROJECT = "deeplearning-platform-release"
# `synthdet:gpu` of a stack without a GPU (the CPU stacks: a plain OS image, CPU torch).
NO_GPU = "none"
# AWS publishes the Deep Learning AMIs under the "amazon" owner alias
# (account 898082745236); naming the alias keeps look-alike community AMIs out.
AWS_AMI_OWNERS = ("amazon",)


@dataclass(frozen=True)
class GpuModel:
    """What the image choice needs to know about a GPU."""

    key: str  # the stack config value (`synthdet:gpu`)
    name: str
    architecture: str
    capability: tuple[int, int]
    # Newest NVIDIA driver branch that still supports it (None: all current ones).
    last_driver_branch: int | None = None
    # Whether NVIDIA's open kernel modules support it (Turing and newer).
    open_kernel_modules: bool = True


GPUS: dict[str, GpuModel] = {
    "t4": GpuModel("t4", "NVIDIA T4", "Turing", (7, 5)),
    "m60": GpuModel(
        "m60",
        "NVIDIA Tesla M60",
        "Maxwell",
        (5, 2),
        last_driver_branch=580,
        open_kernel_modules=False,
    ),
}

# PyTorch CUDA builds and the architectures their kernels start at (the same
# facts as bootstrap/torch_select.CUDA_BUILDS, reduced to what an image needs).
TORCH_BUILD_MIN_CAPABILITY: dict[str, tuple[int, int]] = {
    "cu126": (5, 0),
    "cu128": (7, 5),
    "cu129": (7, 5),
    "cu130": (7, 5),
}
# Oldest driver each build's CUDA runtime accepts (minor-version compatibility).
TORCH_BUILD_MIN_DRIVER_BRANCH: dict[str, int] = {
    "cu126": 525,
    "cu128": 525,
    "cu129": 525,
    "cu130": 580,
}


@dataclass(frozen=True)
class ImageChoice:
    """One boot image line for one GPU on one cloud, and why it fits."""

    cloud: Cloud
    gpu: str
    # GCP: an image family in `gcp_project`, resolved to its newest image at deploy.
    gcp_project: str | None = None
    gcp_family: str | None = None
    # AWS: newest AMI whose name matches, from these owners.
    ami_owners: tuple[str, ...] = ()
    ami_name: str | None = None
    # Deprecated AMIs stay launchable but are hidden from lookups by default.
    ami_include_deprecated: bool = False
    ssh_user: str = "ubuntu"
    os: str = ""
    driver_branch: int = 0  # the NVIDIA driver branch the line ships
    open_kernel_modules: bool = False
    torch_build: str = ""  # the PyTorch CUDA build expected to serve on it
    carries_torch: bool = False  # the image's own torch serves (nothing downloaded at boot)
    note: str = ""

    @property
    def source(self) -> str:
        """Human-readable image source (for logs and docs)."""
        if self.cloud == "gcp":
            return f"projects/{self.gcp_project}/global/images/family/{self.gcp_family}"
        return f"AMI '{self.ami_name}' owned by {', '.join(self.ami_owners)}"


IMAGES: dict[tuple[Cloud, str], ImageChoice] = {
    ("gcp", "t4"): ImageChoice(
        cloud="gcp",
        gpu="t4",
        gcp_project=GCP_IMAGE_PROJECT,
        # Ubuntu 22.04, NVIDIA R580, CUDA 12.9, PyTorch 2.9 preinstalled (M132+).
        # The older *-nvidia-570 families were deprecated in April 2026.
        gcp_family="pytorch-2-9-cu129-ubuntu-2204-nvidia-580",
        ssh_user="synthdet",
        os="Ubuntu 22.04",
        driver_branch=580,
        open_kernel_modules=True,
        torch_build="cu129",
        carries_torch=True,
        note="The image's own torch (cu129, sm_75 kernels) serves the T4; no download.",
    ),
    ("aws", "t4"): ImageChoice(
        cloud="aws",
        gpu="t4",
        ami_owners=AWS_AMI_OWNERS,
        # Current, maintained line; lists G4dn among its supported instances.
        ami_name="Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
        ssh_user="ubuntu",
        os="Ubuntu 22.04",
        # 2026 releases ship R595 (R580 in late 2025).
        driver_branch=595,
        open_kernel_modules=True,
        torch_build="cu130",
        note="Base image without torch: the bootstrap installs the newest build the "
        "driver runs (cu130 on R580+); every current build has sm_75 kernels.",
    ),
    ("aws", "m60"): ImageChoice(
        cloud="aws",
        gpu="m60",
        ami_owners=AWS_AMI_OWNERS,
        # The last Ubuntu DLAMI line with NVIDIA's proprietary driver: it listed
        # G3 among its supported instances and ships an R535-class driver that
        # still drives Maxwell. The line is frozen (Ubuntu 20.04 reached its
        # DLAMI end of support), so its AMIs are deprecated but launchable.
        ami_name="Deep Learning Base Proprietary Nvidia Driver GPU AMI (Ubuntu 20.04) *",
        ami_include_deprecated=True,
        ssh_user="ubuntu",
        os="Ubuntu 20.04",
        driver_branch=535,
        open_kernel_modules=False,
        torch_build="cu126",
        note="torch cu126 is the newest build with Maxwell (sm_50) kernels; its wheels "
        "need Python >= 3.9, and Ubuntu 20.04's system Python is 3.8.",
    ),
}


# Without a GPU: the distribution's own image, nothing preinstalled. Debian 12 is what the
# bootstrap's test hosts run (tests/testhost): Python 3.11, and apt has everything the
# bootstrap installs (a JRE, nginx, nftables, python3-venv).
CPU_IMAGES: dict[Cloud, ImageChoice] = {
    "gcp": ImageChoice(
        cloud="gcp",
        gpu=NO_GPU,
        # Google's public image project for Debian; the family names the newest Debian 12 image.
        gcp_project="debian-cloud",
        gcp_family="debian-12",
        ssh_user="synthdet",
        os="Debian 12",
        torch_build="cpu",
        note="Plain Debian 12: the bootstrap installs PyTorch's CPU build (about 200 MB).",
    ),
    "aws": ImageChoice(
        cloud="aws",
        gpu=NO_GPU,
        # Debian's own AMIs (https://wiki.debian.org/Cloud/AmazonEC2Image): the account the
        # Debian cloud team publishes from, so look-alike community AMIs are kept out.
        ami_owners=("136693071363",),
        ami_name="debian-12-amd64-*",
        ssh_user="admin",
        os="Debian 12",
        torch_build="cpu",
        note="Plain Debian 12: the bootstrap installs PyTorch's CPU build (about 200 MB).",
    ),
}


def ami_filters(choice: ImageChoice) -> dict[str, list[str]]:
    """The EC2 DescribeImages filters that find a line's AMIs: the program's look-up and
    the pre-flight check's (infra/preflight.py) use these, so both find the same image."""
    return {"name": [choice.ami_name or ""], "architecture": ["x86_64"], "state": ["available"]}


class ImageSelectError(ValueError):
    """No image line for this cloud/GPU; the message lists what exists."""


def supported_gpus(cloud: Cloud) -> list[str]:
    return sorted(gpu for (c, gpu) in IMAGES if c == cloud)


def select_image(cloud: Cloud, gpu: str) -> ImageChoice:
    """The image line for a GPU on a cloud, or the plain OS without one (a pure table lookup)."""
    if gpu == NO_GPU:
        return CPU_IMAGES[cloud]
    try:
        return IMAGES[(cloud, gpu)]
    except KeyError:
        raise ImageSelectError(
            f"no image for GPU {gpu!r} on {cloud}: supported are {supported_gpus(cloud)} "
            f"(or {NO_GPU!r}: no GPU, a plain OS image and CPU torch)"
        ) from None


def driver_supports(gpu: GpuModel, choice: ImageChoice) -> bool:
    """Whether the image's driver can drive this GPU at all."""
    if choice.open_kernel_modules and not gpu.open_kernel_modules:
        return False
    return gpu.last_driver_branch is None or choice.driver_branch <= gpu.last_driver_branch


def torch_build_fits(gpu: GpuModel, choice: ImageChoice) -> bool:
    """Whether the expected torch build has kernels for the GPU and runs on the driver."""
    min_cap = TORCH_BUILD_MIN_CAPABILITY.get(choice.torch_build)
    min_driver = TORCH_BUILD_MIN_DRIVER_BRANCH.get(choice.torch_build)
    if min_cap is None or min_driver is None:
        return False
    # A cubin for sm_XY runs on sm_XZ with Z >= Y, same major; PTX runs on anything newer.
    # The builds' oldest arch is an sm_X0 cubin, so "same major or newer" is the test
    # for cu126 (sm_50 on sm_52) and cu12x (sm_75 on the T4).
    return gpu.capability >= min_cap and choice.driver_branch >= min_driver


def check_choice(choice: ImageChoice) -> list[str]:
    """Problems with a table row (empty when it is consistent)."""
    problems = _gpu_problems(choice) if choice.gpu != NO_GPU else _cpu_problems(choice)
    if choice.cloud == "gcp" and not (choice.gcp_project and choice.gcp_family):
        problems.append("a GCP image needs a project and a family")
    if choice.cloud == "aws" and not (choice.ami_owners and choice.ami_name):
        problems.append("an AWS image needs owners and a name filter")
    return problems


def _gpu_problems(choice: ImageChoice) -> list[str]:
    gpu = GPUS.get(choice.gpu)
    if gpu is None:
        return [f"unknown GPU {choice.gpu!r}"]
    problems = []
    if not driver_supports(gpu, choice):
        problems.append(f"{choice.source}: driver R{choice.driver_branch} cannot drive a {gpu.name}")
    if not torch_build_fits(gpu, choice):
        problems.append(
            f"{choice.source}: torch {choice.torch_build} does not fit {gpu.name} "
            f"(sm_{gpu.capability[0]}{gpu.capability[1]}) on R{choice.driver_branch}"
        )
    return problems


def _cpu_problems(choice: ImageChoice) -> list[str]:
    """A row without a GPU: a plain image (no driver, no torch of its own), CPU torch serves."""
    problems = []
    if choice.torch_build != "cpu":
        problems.append(f"{choice.source}: without a GPU torch is the cpu build, not {choice.torch_build}")
    if choice.driver_branch or choice.open_kernel_modules or choice.carries_torch:
        problems.append(f"{choice.source}: a plain OS image has no NVIDIA driver and no torch of its own")
    return problems
