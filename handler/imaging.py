"""From request bytes to the RGB tensor the model reads, refusing bad input early.

The app sends JPEG with `Content-Type: image/jpg`; other clients send PNG and
friends. What matters is the bytes, never the Content-Type. Size limits are
checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from handler.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage

# Formats a camera, a browser or a test script plausibly sends. Restricting
# PIL to these keeps exotic decoders (and their bugs) out of reach.
# (Multi-picture JPEGs from phones open through the JPEG plugin.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Faster R-CNN resizes the short side to 800 px with the long side capped at
# 1333; beyond this ratio the short side would shrink to a few pixels.
MAX_ASPECT_RATIO = 100
EXIF_ORIENTATION = 0x0112  # nvJPEG ignores it; PIL applies it


def request_bytes(request: Mapping[str, Any]) -> bytes:
    """The raw body of one TorchServe request (`data` for forms, `body` otherwise)."""
    payload = request.get("data")
    if payload is None:
        payload = request.get("body")
    if payload is None and request:
        fields = ", ".join(sorted(str(key) for key in request))
        raise EmptyBody(
            f"form fields {fields} received: send the image as the raw body or in a form field named 'data'"
        )
    if payload is None or (isinstance(payload, (bytes, bytearray, memoryview, str)) and len(payload) == 0):
        raise EmptyBody("empty request body: POST the image bytes (JPEG or PNG)")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    # TorchServe decodes JSON and text bodies before the handler sees them.
    raise NotAnImage(
        f"the body was decoded as {type(payload).__name__} (JSON or text): "
        "POST raw image bytes, e.g. with Content-Type: image/jpeg"
    )


def decode_image(raw: bytes, max_pixels: int) -> Image.Image:
    """Decode to an RGB image in display orientation, or raise a RequestError."""
    image = _open(raw)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is "
            f"{max_pixels} (the app sends 1280 px wide frames)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise CorruptImage(
            f"image is {width}x{height}: aspect ratio beyond {MAX_ASPECT_RATIO}:1 is not a photo"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CorruptImage(f"image data is corrupt or truncated: {err}") from err
    return to_rgb(image)


def _open(raw: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies; PIL's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"image too large: {err}") from err
    except UnidentifiedImageError as err:
        raise NotAnImage(
            f"body is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)}); "
            f"got {len(raw)} bytes starting {raw[:8].hex()}"
        ) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise CorruptImage(f"image header is corrupt: {err}") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: grey, palette, CMYK, alpha and 16-bit included."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _high_bit_depth_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colour: show them on white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale: scale to 0..255 (PIL's convert would clip)."""
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" and values.max(initial=0.0) <= 1.0 else 65535.0
    if image.mode != "F" and values.max(initial=0.0) <= 255:
        top = 255.0
    grey = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image to a float CHW tensor in [0, 1].

    The same arithmetic as torchvision's `ToTensor` (uint8 -> float32, divide
    by 255), so detections match a reference pipeline bit for bit. Fewer passes
    over the pixels: PIL's buffer is viewed, not copied again, and the HWC ->
    CHW transpose happens in the same pass as the conversion to float.
    """
    with warnings.catch_warnings():
        # PIL hands numpy a read-only buffer; it is only ever read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8))
    height, width, _ = pixels.shape
    out = torch.empty((3, height, width), dtype=torch.float32)
    out.copy_(pixels.permute(2, 0, 1))
    return out.div_(255)


def jpeg_for_gpu(raw: bytes, max_pixels: int) -> bool:
    """Whether nvJPEG may decode these bytes: a plain RGB JPEG within the limits, no EXIF rotation.

    Reads the header only. Anything else (and any doubt) takes the PIL path,
    which applies every check and answers bad input with its 4xx.
    """
    if not raw.startswith(b"\xff\xd8"):
        return False
    try:
        image = _open(raw)
        width, height = image.size
        rotated = image.getexif().get(EXIF_ORIENTATION, 1) != 1
    except Exception:  # a header PIL cannot read is the PIL path's to report
        return False
    return (
        image.format == "JPEG"
        and image.mode == "RGB"
        and width * height <= max_pixels
        and max(width, height) <= MAX_ASPECT_RATIO * min(width, height)
        and not rotated
    )
