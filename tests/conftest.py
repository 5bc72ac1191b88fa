"""Fixtures shared by every test level: checkpoints and images made on the spot.

No weights can be downloaded, so checkpoints are random-weight Faster R-CNNs
saved in the forms Unity's training code and other tools produce.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.demo_model import write_demo_checkpoint


@pytest.fixture(scope="session")
def unity_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`{"model": state_dict, "config": yacs CfgNode}`, 64 classes, seeded."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthdet_faster_rcnn.pth")


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model with different weights (multi-model serving)."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("ckpt2") / "other.pth", seed=1)
