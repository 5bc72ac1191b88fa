"""Draw detections on the image they came from (`synthdet predict --out`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from serving.contract import Detection

# One colour per label prefix, as the app colours boxes by `cereal`, `snack`, ...
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"]


def draw_detections(image_bytes: bytes, detections: Sequence[Detection], out: Path) -> None:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes))).convert("RGB")
    draw = ImageDraw.Draw(image)
    for detection in detections:
        colour = PALETTE[hash(detection.label.split("_")[0]) % len(PALETTE)]
        box = (detection.top_left.x, detection.top_left.y, detection.bottom_right.x, detection.bottom_right.y)
        draw.rectangle(box, outline=colour, width=3)
        caption = f"{detection.label} {detection.score:.2f}"
        text_box = draw.textbbox((box[0], box[1]), caption)
        draw.rectangle(text_box, fill=colour)
        draw.text((box[0], box[1]), caption, fill="white")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
