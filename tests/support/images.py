"""Images in every form a client might send, built in memory."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serving.contract import make_test_jpeg

__all__ = ["make_test_jpeg", "encode", "photo", "with_exif_orientation"]


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A decoded camera-like RGB frame."""
    return Image.open(io.BytesIO(make_test_jpeg(width, height, seed=seed))).convert("RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def sixteen_bit_png(width: int = 64, height: int = 48) -> bytes:
    ramp = np.linspace(0, 65535, width * height, dtype=np.uint16).reshape(height, width)
    return encode(Image.fromarray(ramp), "PNG")


def bomb_png(side: int = 30_000) -> bytes:
    """A tiny file that decodes to side*side pixels (a decompression bomb)."""
    return encode(Image.new("1", (side, side)), "PNG", optimize=True)
