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


def assert_same_detections(
    served: list[dict[str, Any]], reference: list[dict[str, Any]], tolerance: float = 0.05
) -> None:
    """Box by box: same count, same labels, coordinates and scores within rounding."""
    assert len(served) == len(reference), f"{len(served)} served vs {len(reference)} reference"
    ordered = sorted(reference, key=lambda item: item["score"], reverse=True)
    for got, want in zip(served, ordered, strict=True):
        assert got["label_id"] == want["label_id"]
        corners = got["box"]["top_left"], got["box"]["bottom_right"]
        coords = [corners[0]["x"], corners[0]["y"], corners[1]["x"], corners[1]["y"]]
        assert coords == pytest.approx(want["box"], abs=tolerance)
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
