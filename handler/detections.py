"""Model output to the JSON the SynthDet Viewer parses (see client-contract.md).

Each detection: {"label", "label_id", "box": {"top_left": {x, y},
"bottom_right": {x, y}}, "score"}, coordinates in pixels of the image sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

Detection = dict[str, Any]


def to_contract(
    output: Mapping[str, torch.Tensor], names: Sequence[str], score_threshold: float
) -> list[Detection]:
    """Detections scoring above the threshold, highest first."""
    boxes = output["boxes"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    detections = [
        _detection(box, int(label), float(score), names)
        for box, label, score in zip(boxes, labels, scores, strict=True)
        if score > score_threshold
    ]
    detections.sort(key=lambda item: item["score"], reverse=True)
    return detections


def _detection(box: Sequence[float], label_id: int, score: float, names: Sequence[str]) -> Detection:
    x0, y0, x1, y1 = (round(float(value), 2) for value in box)
    label = names[label_id] if 0 <= label_id < len(names) else str(label_id)
    return {
        "label": label,
        "label_id": label_id,
        "box": {"top_left": {"x": x0, "y": y0}, "bottom_right": {"x": x1, "y": y1}},
        "score": round(score, 5),
    }


def to_json(detections: list[Detection]) -> str:
    """Compact JSON array; `[]` when nothing was found."""
    return json.dumps(detections, separators=(",", ":"))
