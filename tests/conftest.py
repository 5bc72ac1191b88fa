"""Fixtures shared by every test level: checkpoints and images made on the spot.

No weights can be downloaded, so checkpoints are random-weight Faster R-CNNs
saved in the forms Unity's training code and other tools produce.

The suite never writes into the user's own caches: `SYNTHDET_CACHE` (model
archives, `synthdet serve` work directories, replica bundles) points at a
temporary folder for the whole session, subprocesses included.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthdet.demo_model import write_demo_checkpoint

USER_CACHE = Path.home() / ".cache" / "synthdet"
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="synthdet-test-cache-"))
os.environ["SYNTHDET_CACHE"] = str(_SESSION_CACHE)


def _user_cache_entries() -> set[str]:
    return {p.name for p in USER_CACHE.iterdir()} if USER_CACHE.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def leaves_the_user_cache_alone() -> Iterator[None]:
    before = _user_cache_entries()
    yield
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
    added = _user_cache_entries() - before
    assert not added, f"tests wrote into {USER_CACHE}: {sorted(added)}"


@pytest.fixture(scope="session")
def unity_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`{"model": state_dict, "config": yacs CfgNode}`, 64 classes, seeded."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthdet_faster_rcnn.pth")


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model with different weights (multi-model serving)."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("ckpt2") / "other.pth", seed=1)
