"""What a replica fetches at boot: this project's wheel, its locked packages and the model archives.

Built on the deploying machine (at `pulumi up`, or by a test) and put where
instances can read them: the stack's bucket, or any HTTP directory. Both are
cached by the hash of their inputs, so an unchanged project or model yields
the same file (the same bytes, the same bucket object: no diff, no rollout).
Object names carry the content hash: a rolling update never mixes versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.archive import ARCHIVES_FOLDER, cache_dir, cached_archive
from serving.inputs import sha256_file, sha256_files
from serving.models import ModelSpec
from serving.settings import ServingSettings

REPO = Path(__file__).resolve().parents[1]
# What goes into the wheel (pyproject's packages and metadata files).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "bootstrap", "handler", "serving", "synthdet", "infra")
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
# Zip timestamps of the wheel: fixed, so a rebuild of the same sources is byte-identical.
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01
# The cache's folder of built project wheels (`synthdet cache` lists and clears it).
WHEELS_FOLDER = "wheels"

# Installed beside the wheel (which is installed --no-deps: its own dependency list
# pulls torch): what `bootstrap.boot_local` imports, locked with hashes.
BOOT_REQUIREMENTS = REPO / "bootstrap" / "requirements" / "boot.txt"


class BundleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    """One file and the object name it gets (content-addressed)."""

    path: Path
    sha256: str
    object_name: str


@dataclass(frozen=True)
class Bundle:
    wheel: Artifact
    # The boot venv's packages, pinned with hashes (pip --require-hashes).
    boot_requirements: Artifact
    # model name -> its archive
    archives: dict[str, Artifact]

    def files(self) -> list[Artifact]:
        return [self.wheel, self.boot_requirements, *self.archives.values()]


def _source_files(repo: Path) -> list[Path]:
    files = []
    for name in WHEEL_SOURCES:
        root = repo / name
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += [
                p for p in root.rglob("*") if p.is_file() and not SKIP_PARTS & set(p.relative_to(repo).parts)
            ]
    return sorted(files)


def source_hash(repo: Path = REPO) -> str:
    if not (repo / "pyproject.toml").is_file():
        raise BundleError(
            f"{repo} is not this project's source tree (no pyproject.toml); install it with "
            "`pip install -e .` so the wheel can be built"
        )
    return sha256_files(_source_files(repo), repo)


def build_wheel(repo: Path = REPO, cache: Path | None = None) -> Path:
    """`pip wheel --no-deps` of this project, built once per source hash (in a copy of the tree)."""
    out = (cache or cache_dir()) / WHEELS_FOLDER / source_hash(repo)[:16]
    found = sorted(out.glob("*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="synthdet-wheel-") as tmp:
        # A copy: building in the tree would leave build/ and *.egg-info behind.
        src = Path(tmp) / "src"
        for path in _source_files(repo):
            target = src / path.relative_to(repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        dist = Path(tmp) / "dist"
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        proc = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
            + ["-w", str(dist), str(src)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wheels = sorted(dist.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise BundleError(f"building the project wheel failed: {(proc.stderr or proc.stdout)[-1500:]}")
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheels[0].name
        shutil.copyfile(wheels[0], final)
    return final


def build_archives(
    models: Sequence[ModelSpec], serving: ServingSettings, cache: Path | None = None
) -> dict[str, Path]:
    """Each model's .mar, from the archive cache (keyed by everything it is built from)."""
    archives_dir = cache / ARCHIVES_FOLDER if cache else None
    return {spec.name: cached_archive(spec, serving, archives_dir) for spec in models}


def artifact(path: Path, folder: str) -> Artifact:
    sha = sha256_file(path)
    # The wheel keeps its own file name (pip reads the version and tags from it).
    return Artifact(path=path, sha256=sha, object_name=f"{folder}/{sha[:16]}/{path.name}")


def build_bundle(models: Sequence[ModelSpec], serving: ServingSettings, cache: Path | None = None) -> Bundle:
    wheel = build_wheel(cache=cache)
    archives = build_archives(models, serving, cache)
    return Bundle(
        wheel=artifact(wheel, "wheels"),
        boot_requirements=artifact(BOOT_REQUIREMENTS, "requirements"),
        archives={name: artifact(path, "models") for name, path in archives.items()},
    )
