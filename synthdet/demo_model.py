"""An untrained SynthDet checkpoint in Unity's on-disk format.

Lets anyone try the whole path (archive, serve, deploy, phone) before they
have trained a model. Its detections are meaningless: say so loudly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from yacs.config import CfgNode

from handler.checkpoint import build_model

UNTRAINED_WARNING = (
    "This checkpoint is UNTRAINED (random weights): it exercises the serving path "
    "but its detections mean nothing. Train a SynthDet model for real results."
)


def unity_config(num_classes: int) -> CfgNode:
    """The shape of the yacs config Unity's training code saves beside the weights."""
    config = CfgNode()
    config.MODEL = CfgNode()
    config.MODEL.NAME = "faster_rcnn_resnet50_fpn"
    config.MODEL.NUM_CLASSES = num_classes
    config.TRAIN = CfgNode()
    config.TRAIN.UNTRAINED_DEMO = True
    return config


def write_demo_checkpoint(path: Path, num_classes: int = 64, seed: int = 0) -> Path:
    """Save `{"model": state_dict, "config": CfgNode}` with seeded random weights."""
    torch.manual_seed(seed)
    model = build_model(num_classes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": unity_config(num_classes)}, path)
    return path
