"""A plain reference pipeline, as the original project's handler ran the model.

PIL decode, torchvision ToTensor, forward with autograd on, batch of one,
fp32, then the original's server-side filter (score > 0.5). Tests and
benchmarks compare our serving path against it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.transforms import ToTensor


def load_reference_model(checkpoint: Path, num_classes: int = 64) -> torch.nn.Module:
    # The original trusted its own checkpoint: full unpickling (needs yacs).
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = raw.get("model", raw)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    model.load_state_dict(state)
    return model.eval()


def reference_detections(
    model: torch.nn.Module, image: bytes, threshold: float = 0.5
) -> list[dict[str, Any]]:
    tensor = ToTensor()(Image.open(io.BytesIO(image)).convert("RGB"))
    with torch.no_grad():
        output = model([tensor])[0]
    keep = output["scores"] > threshold
    return [
        {"label_id": int(label), "box": [float(v) for v in box], "score": float(score)}
        for box, label, score in zip(
            output["boxes"][keep], output["labels"][keep], output["scores"][keep], strict=True
        )
    ]


SCORE_TOLERANCE = 5e-4  # float reassociation (channels_last, thread count) moves scores ~1e-4


def assert_same_detections(
    served: list[dict[str, Any]], reference: list[dict[str, Any]], tolerance: float = 0.05
) -> None:
    """Box by box: the same detections, each matched to one reference detection with the
    same label, corners within `tolerance` px and a score within SCORE_TOLERANCE."""
    assert len(served) == len(reference), f"{len(served)} served vs {len(reference)} reference"
    unmatched = list(reference)
    for got in served:
        corners = got["box"]["top_left"], got["box"]["bottom_right"]
        coords = [corners[0]["x"], corners[0]["y"], corners[1]["x"], corners[1]["y"]]
        match = next(
            (
                want
                for want in unmatched
                if want["label_id"] == got["label_id"]
                and coords == pytest.approx(want["box"], abs=tolerance)
                and got["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)
            ),
            None,
        )
        assert match is not None, f"served detection {got} has no twin in the reference"
        unmatched.remove(match)
