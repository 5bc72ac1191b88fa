"""The service's own Python environment: TorchServe pinned, torch that fits the GPU.

When the image's torch has kernels for this GPU (or there is no GPU), the
venv is made with --system-site-packages and reuses it: no multi-GB
download. Otherwise the venv is isolated and gets the torch build
`torch_select` names. A stamp file keyed by every input makes an unchanged
venv a single cheap check on reruns.

The interpreter comes from `bootstrap.python_select` (the image's when it is
>= 3.10, else one found or installed on the host); a different interpreter
than the image's torch Python means torch is installed, never reused.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from importlib import resources

from bootstrap import files, python_select
from bootstrap.api import DeployOptions, PipSource
from bootstrap.facts import HostFacts
from bootstrap.steps.base import VENV_DIR, DeployError, HostState, Run
from bootstrap.steps.layout import Layout
from bootstrap.steps.packages import SystemPackages
from bootstrap.steps.step import Done, Footprint, Step
from bootstrap.torch_select import (
    DEFAULT_TORCH_INDEX,
    TorchChoice,
    TorchSelectError,
    select_torch,
    torchvision_for,
)
from serving.inputs import canonical_json, inputs_hash, sha256_bytes

STAMP_NAME = ".synthdet-stamp"
REQUIREMENTS_NAME = ".synthdet-requirements.txt"


@dataclass(frozen=True)
class Venv:
    """The service venv at VENV_DIR: which torch it has and which Python runs it."""

    torch: TorchChoice
    # The venv's interpreter version ("3.11.2"): where TorchServe's files are.
    python_version: str
    # VENV_DIR now points at another venv: TorchServe must restart to use it.
    switched: bool


def host_requirements() -> str:
    """The service venv's packages, locked with hashes (bootstrap/requirements/service.txt)."""
    return resources.files("bootstrap").joinpath("requirements", "service.txt").read_text("utf-8")


def pip_args(pip: PipSource) -> list[str]:
    """Index options for pip. find-links without an index means a closed wheelhouse."""
    args: list[str] = []
    if pip.index_url:
        args += ["--index-url", pip.index_url]
    elif pip.find_links:
        # A locked-down host: only the wheelhouse (pip would otherwise try PyPI and retry).
        args.append("--no-index")
    if pip.find_links:
        args += ["--find-links", pip.find_links]
    for host in pip.trusted_hosts:
        args += ["--trusted-host", host]
    return args


def torch_install_args(options: DeployOptions, choice: TorchChoice) -> list[str]:
    """pip arguments that install torch+torchvision of the chosen build."""
    version = options.torch_version
    reqs = (
        [f"torch=={version}", f"torchvision=={torchvision_for(version)}"]
        if version
        else ["torch", "torchvision"]
    )
    pip = options.pip
    if options.torch_index_url or not (pip.index_url or pip.find_links):
        base = options.torch_index_url or DEFAULT_TORCH_INDEX
        index = choice.index_url(base) or base
        trusted = [a for h in pip.trusted_hosts for a in ("--trusted-host", h)]
        return [*reqs, "--index-url", index, *trusted]
    # A mirror or wheelhouse given: it must carry the right build.
    return [*reqs, *pip_args(pip)]


def stamp_for(
    options: DeployOptions,
    choice: TorchChoice,
    python: str,
    requirements: str,
    python_version: str | None = None,
) -> str:
    inputs = {
        "python": python,
        # The same path can become another Python (an image upgrade, a reinstall):
        # the venv's interpreter links would then point at the wrong one.
        "python_version": python_version,
        "reuse_image_torch": choice.reuse_image,
        "build": choice.build.flavor if choice.build else None,
        "torch_version": options.torch_version,
        "requirements": sha256_bytes(requirements),
        "pip": pip_args(options.pip),
        "torch_index": options.torch_index_url,
        "version": 1,
    }
    return canonical_json(inputs)


VERIFY = r"""
import json, torch, ts, torchvision
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "ts": ts.__version__}))
"""


def choose_torch(facts: HostFacts, selected: python_select.SelectedPython) -> TorchChoice:
    """torch_select's choice for the interpreter the venv is built from."""
    try:
        # Only the interpreter that has the image's torch can reuse it.
        choice = select_torch(facts.gpu, selected.image_torch)
    except TorchSelectError as exc:
        raise DeployError(str(exc)) from exc
    image = facts.image_torch
    if image is not None and selected.image_torch is None:
        why = f"the image's torch {image.torch} belongs to Python {image.python_version} ({image.python})"
        return replace(choice, reason=f"{choice.reason}; {why}")
    return choice


def apply(run: Run, state: HostState, packages: SystemPackages, layout: Layout) -> Done[Venv]:
    selected = python_select.resolve(run, state, pip_args(run.options.pip))
    choice = choose_torch(run.facts, selected)
    python = selected.path
    requirements = host_requirements()
    stamp = stamp_for(run.options, choice, python, requirements, selected.version)
    # Each set of inputs gets its own directory; VENV_DIR is a symlink to the
    # current one. A failed install never touches the venv the service runs.
    target = f"{VENV_DIR}-{inputs_hash(json.loads(stamp))[:12]}"
    q = shlex.quote
    have = run.conn.run(
        f'echo "$(readlink {VENV_DIR})"; cat {target}/{STAMP_NAME} 2>/dev/null', check=False
    ).stdout
    current, _, stamp_there = have.partition("\n")
    built = stamp_there.strip() == stamp and run.conn.run(f"test -x {target}/bin/torchserve", check=False).ok
    if built and current.strip() == target:
        detail = f"Python {selected.version} ({selected.source}); {choice.reason}"
        return Done(False, detail, Venv(choice, selected.version, switched=False))

    if not built:
        run.progress.status(f"preparing the service venv: {choice.reason}")
        site = "--system-site-packages " if choice.reuse_image else ""
        run.conn.run(f"rm -rf {target} && {q(python)} -m venv {site}{target}", timeout_s=300)
        pip = f"{target}/bin/python -m pip --disable-pip-version-check --no-input -q"
        reqs = f"{target}/{REQUIREMENTS_NAME}"
        files.upload_atomic(run.conn, requirements.encode(), reqs)
        if not choice.reuse_image:
            run.progress.status(f"installing torch ({choice.build.flavor if choice.build else '?'})")
            _pip(run, f"{pip} install {' '.join(q(a) for a in torch_install_args(run.options, choice))}")
        run.progress.status("installing TorchServe and the handler's dependencies (locked, hash-checked)")
        extra = " ".join(q(a) for a in pip_args(run.options.pip))
        _pip(run, f"{pip} install {extra} --require-hashes -r {reqs}")
        info = _verify(run, target, choice)
        files.upload_atomic(run.conn, stamp.encode(), f"{target}/{STAMP_NAME}")
        detail = f"Python {selected.version} ({selected.source}); {choice.reason}; torch {info.get('torch')}"
    else:
        detail = f"{choice.reason} (switched back to an existing venv)"
    # Atomic switch (rename over the old link), then drop the older venvs.
    run.conn.run(
        f"ln -sfn {target} {VENV_DIR}.new && mv -Tf {VENV_DIR}.new {VENV_DIR} && "
        f'for d in {VENV_DIR}-*; do [ "$d" = {target} ] || rm -rf "$d"; done'
    )
    return Done(True, detail, Venv(choice, selected.version, switched=True))


def _verify(run: Run, venv: str, choice: TorchChoice) -> dict[str, object]:
    """Import torch and TorchServe in the new venv; a GPU host must see its GPU."""
    facts = run.facts
    verify = run.conn.run(f"{venv}/bin/python - <<'EOF'\n{VERIFY}\nEOF", check=False)
    try:
        info = json.loads(verify.stdout.strip().splitlines()[-1]) if verify.ok else None
    except (json.JSONDecodeError, IndexError):
        info = None
    if not isinstance(info, dict):
        raise DeployError(
            f"the service venv cannot import torch and TorchServe: {verify.stderr.strip()[-600:]}"
        )
    if choice.device == "cuda" and not info.get("cuda_available"):
        raise DeployError(
            f"torch {info.get('torch')} in the service venv cannot use the GPU "
            f"({facts.gpu.name if facts.gpu else '?'}, driver "
            f"{facts.gpu.driver_version if facts.gpu else '?'}). Check the NVIDIA driver "
            "(nvidia-smi) or pin a build with --torch-version/--torch-index-url."
        )
    return info


def _pip(run: Run, cmd: str) -> None:
    res = run.conn.run(cmd, check=False, timeout_s=3600, env={"PIP_DEFAULT_TIMEOUT": "60"})
    if not res.ok:
        raise DeployError(
            f"pip failed on the host (exit {res.rc}): {(res.stderr or res.stdout).strip()[-1200:]}"
            "\nCheck the package index options (--pip-index-url / --pip-find-links) and that "
            "the host can reach it."
        )


# Its venvs (and uv's Pythons) are in the layout's /opt/synthdet; it may apt-install a
# newer Python (bootstrap.python_select).
STEP = Step("venv", apply, Footprint(apt_packages=True))
