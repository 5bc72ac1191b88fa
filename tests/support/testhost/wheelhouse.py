"""Python packages for the guests, which have no internet: downloaded here, served over HTTP.

Exactly the locked sets a real host installs (bootstrap/requirements/*.txt, pinned with
hashes), for the guest's Python; pip downloads them with --require-hashes, so a
wheelhouse never holds anything the lock does not name.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.testhost.common import (
    BOOT_REQUIREMENTS,
    CACHE_ROOT,
    GUEST_PYTHON,
    SERVICE_REQUIREMENTS,
    VENV,
    _flock,
    _log,
    _remove_tree,
    _run,
    _short_hash,
)


def build_wheelhouse(requirements: Path = SERVICE_REQUIREMENTS, prefix: str = "wheels") -> Path:
    """`pip download` of a locked requirements file for the guest's Python, cached by its text."""
    text = requirements.read_text()
    final = CACHE_ROOT / f"{prefix}-{_short_hash({'req': text, 'py': GUEST_PYTHON})}"
    if final.is_dir():
        return final
    pip = VENV / "bin" / "pip"
    pip_cmd = [str(pip)] if pip.exists() else [sys.executable, "-m", "pip"]
    with _flock(CACHE_ROOT / ".build.lock", 1800, "the cache build lock"):
        if final.is_dir():
            return final
        _log(f"downloading the wheelhouse for {requirements.name}...")
        tmp = final.with_name(f".{final.name}.tmp")
        _remove_tree(tmp)
        tmp.mkdir(parents=True)
        _run(
            [*pip_cmd, "download", "-q", "--disable-pip-version-check", "--require-hashes"]
            + ["--python-version", GUEST_PYTHON, "--only-binary=:all:", "-d", tmp, "-r", requirements],
            timeout=1200,
            what=f"pip download of {requirements}",
        )
        tmp.rename(final)
        _log(f"wheelhouse ready: {final} ({len(list(final.iterdir()))} files)")
    return final


def build_boot_wheelhouse() -> Path:
    """A replica's boot venv packages (what its startup script installs)."""
    return build_wheelhouse(BOOT_REQUIREMENTS, prefix="boot-wheels")
