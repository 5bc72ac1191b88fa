"""torch and torchvision for the guests, as deep-learning images ship them: hard links from .venv."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.testhost.common import (
    CACHE_ROOT,
    GUEST_PYTHON,
    GUEST_PYTHON_FULL,
    TORCH_ROOTS,
    TORCH_SITE_VERSION,
    VENV,
    TestHostError,
    _flock,
    _log,
    _remove_tree,
    _short_hash,
)


def _normalize(name: str) -> str:
    return canonicalize_name(name)


def _guest_marker_env() -> dict[str, str]:
    """PEP 508 marker variables as the guest's interpreter would report them."""
    return {
        "python_version": GUEST_PYTHON,
        "python_full_version": GUEST_PYTHON_FULL,
        "implementation_version": GUEST_PYTHON_FULL,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": os.uname().machine,
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def _applies(requirement: Requirement, env: dict[str, str], extras: list[str]) -> bool:
    """Whether a Requires-Dist line applies in the guest with one of these extras active."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in extras)


def _venv_site_packages() -> Path:
    matches = sorted((VENV / "lib").glob("python3*/site-packages"))
    if not matches:
        raise TestHostError(f"no site-packages under {VENV}/lib; create the dev venv first")
    site = matches[0]
    if site.parent.name != f"python{GUEST_PYTHON}":
        raise TestHostError(
            f"{site} is for {site.parent.name}, but the guest's Python is {GUEST_PYTHON}: "
            "torch's binary modules would not load there"
        )
    return site


def torch_closure(site: Path | None = None) -> list[importlib.metadata.Distribution]:
    """torch, torchvision and exactly their transitive runtime dependencies, as installed.

    Follows Requires-Dist with the guest's markers. The roots get no extras; extras that a
    dependency line itself asks for (torch needs `cuda-toolkit[cublas,...]`) are honoured,
    otherwise the CUDA libraries torch links against would be left out.
    """
    site = site or _venv_site_packages()
    installed = {
        _normalize(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[str(site)])
    }
    base_env = _guest_marker_env()
    chosen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str], str]] = [(r, frozenset(), "(root)") for r in TORCH_ROOTS]
    while todo:
        name, extras, wanted_by = todo.pop()
        key = _normalize(name)
        dist = installed.get(key)
        if dist is None:
            if key in (_normalize(r) for r in TORCH_ROOTS):
                raise TestHostError(f"{name} is not installed in {site}")
            _log(f"warning: {name} (needed by {wanted_by}) is not installed in the venv; skipped")
            chosen.setdefault(key, set())
            continue
        if key in chosen and extras <= chosen[key]:
            continue
        chosen.setdefault(key, set()).update(extras)
        active = sorted(chosen[key]) or [""]
        for line in dist.requires or []:
            requirement = Requirement(line)
            if not _applies(requirement, base_env, active):
                continue
            extras_wanted = frozenset(_normalize(e) for e in requirement.extras)
            todo.append((requirement.name, extras_wanted, dist.metadata["Name"]))
    return sorted((installed[k] for k in chosen if k in installed), key=lambda d: _normalize(d.name))


def _dist_files(dist: importlib.metadata.Distribution, site: Path) -> set[PurePosixPath]:
    """A distribution's files per RECORD (inside site-packages), its whole .dist-info dir, and
    the cached bytecode of its .py files (the guest's copy is read-only: no pyc writes)."""
    found: set[PurePosixPath] = set()
    for entry in dist.files or []:
        rel = PurePosixPath(str(entry))
        if rel.is_absolute() or ".." in rel.parts:
            continue  # console scripts in bin/ and the like
        found.add(rel)
        if rel.parts[0].endswith(".dist-info"):
            found.update(
                PurePosixPath(p.relative_to(site).as_posix())
                for p in (site / rel.parts[0]).rglob("*")
                if p.is_file()
            )
        if rel.suffix == ".py":
            cache = site / rel.parent / "__pycache__"
            found.update(
                PurePosixPath(p.relative_to(site).as_posix()) for p in cache.glob(f"{rel.stem}.*.pyc")
            )
    return found


def torch_site_path() -> tuple[Path, list[importlib.metadata.Distribution]]:
    site = _venv_site_packages()
    dists = torch_closure(site)
    key = _short_hash(
        {
            "recipe": TORCH_SITE_VERSION,
            "site": str(site),
            # RECORD's mtime changes when pip reinstalls a distribution in place.
            "dists": [(d.metadata["Name"], d.version, _record_mtime(d, site)) for d in dists],
        }
    )
    return CACHE_ROOT / f"torch-site-{key}", dists


def _record_mtime(dist: importlib.metadata.Distribution, site: Path) -> int:
    for entry in dist.files or []:
        if entry.name == "RECORD" and entry.parent.name.endswith(".dist-info"):
            with contextlib.suppress(OSError):
                return (site / str(entry)).stat().st_mtime_ns
    return 0


def build_torch_site() -> Path:
    """A site-packages with torch + torchvision + deps, hard-linked from .venv (no disk cost).

    Bound read-only into the guest, which also protects the venv's files (they are the same
    inodes) from anything the bootstrap does in the guest.
    """
    final, dists = torch_site_path()
    if final.is_dir():
        return final
    site = _venv_site_packages()
    with _flock(CACHE_ROOT / ".build.lock", 1800, "the cache build lock"):
        if final.is_dir():
            return final
        _log(f"linking torch site-packages for the guest ({len(dists)} distributions)...")
        started = time.monotonic()
        tmp = final.with_name(f".{final.name}.tmp")
        _remove_tree(tmp)
        tmp.mkdir(parents=True)
        copied = 0
        files = set().union(*(_dist_files(d, site) for d in dists))
        for rel in sorted(files):
            copied += _link_into(site / rel, tmp / rel)
        if copied:
            _log(f"warning: {copied} files were copied, not hard-linked (another filesystem?)")
        (tmp / ".synthdet-testhost.json").write_text(
            json.dumps({d.metadata["Name"]: d.version for d in dists}, indent=1) + "\n"
        )
        tmp.rename(final)
        names = ", ".join(f"{d.metadata['Name']}=={d.version}" for d in dists)
        _log(f"torch site ready in {time.monotonic() - started:.1f} s: {final}\n  {names}")
    return final


def _link_into(src: Path, dst: Path) -> int:
    """Hard-link one file (1 if it had to be copied instead)."""
    if not src.exists() and not src.is_symlink():
        return 0  # RECORD lists a file that is gone; pip check would complain, we need not
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return 0
    try:
        os.link(src, dst)
        return 0
    except OSError:
        shutil.copy2(src, dst)
        return 1
