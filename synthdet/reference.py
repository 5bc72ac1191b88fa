"""The original project's pipeline, kept to measure against.

As the original handler ran the model: PIL decode, torchvision ToTensor, batch
of one, fp32, then its server-side filter (score > 0.5); the original ran the
forward pass with autograd on, `reference_detections` under no_grad (the same
numbers). The integration tests match our served detections against it box by
box and benchmarks/bench_inprocess.py times it beside ours; nothing serves with it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

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
