"""Fixtures shared by every test level: checkpoints and images made on the spot.

No weights can be downloaded, so checkpoints are random-weight Faster R-CNNs
saved in the forms Unity's training code and other tools produce.

The suite runs in a home of its own: HOME and `SYNTHDET_CACHE` (model
archives, `synthdet serve` work directories, replica bundles) point at
temporary folders for the whole session, subprocesses included, so that it
neither writes into the user's caches, keys and known_hosts nor trips over
another `synthdet` that uses them at the same time (set before anything
reads `Path.home()`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The real home, read from the account database: HOME is about to change.
USER_CACHE = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "synthdet"
_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="synthdet-test-session-"))
_SESSION_CACHE = _SESSION_ROOT / "cache"
_SESSION_HOME = _SESSION_ROOT / "home"
_SESSION_CACHE.mkdir()
_SESSION_HOME.mkdir()
os.environ["SYNTHDET_CACHE"] = str(_SESSION_CACHE)
os.environ["HOME"] = str(_SESSION_HOME)

import pytest  # noqa: E402

from synthdet.demo_model import write_demo_checkpoint  # noqa: E402


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def leaves_the_user_cache_alone() -> Iterator[None]:
    """Nothing the tests made lands in the user's own cache.

    Only names the tests themselves created (in their session cache) are
    looked for there: another `synthdet` running on this machine meanwhile
    may add entries of its own, and that is not the tests' doing.
    """
    before = _entries(USER_CACHE)
    yield
    made_by_tests = _entries(_SESSION_CACHE)
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)
    leaked = (_entries(USER_CACHE) - before) & made_by_tests
    assert not leaked, f"tests wrote into {USER_CACHE}: {sorted(leaked)}"


@pytest.fixture(scope="session")
def unity_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`{"model": state_dict, "config": yacs CfgNode}`, 64 classes, seeded."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthdet_faster_rcnn.pth")


@pytest.fixture(scope="session")
def fitted_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with confident, varied detections on the app test frames (seeded, ~30 s):
    what the accuracy bound needs (tests/support/fitted_model.py)."""
    from tests.support.fitted_model import make_fitted_checkpoint

    return make_fitted_checkpoint(tmp_path_factory.mktemp("fitted") / "fitted.pth")


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model with different weights (multi-model serving)."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("ckpt2") / "other.pth", seed=1)
