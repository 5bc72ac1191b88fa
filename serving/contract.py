"""The phone client's side of the contract, as code: what it sends, how it parses.

Used by `synthdet smoke`/`predict --url`, by the deploy's final check and by
the tests, so they all judge an endpoint exactly as the SynthDet Viewer would
(docs/client-contract.md).
"""

from __future__ import annotations

import io
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

from serving.endpoint import redact

APP_CONTENT_TYPE = "image/jpg"  # sic: the app sends image/jpg, not image/jpeg
APP_WIDTH = 1280
APP_JPEG_QUALITY = 75
# The app's deadline: an answer later than this is dropped (the frame shows nothing and
# the app sends its next one). The one definition every verdict on latency uses.
APP_TIMEOUT_S = 2.0
# How TLS is checked: False accepts any certificate (as the app does); an SSLContext
# pins one (serving.certs.pinned_context: what a deploy just installed).
Verify = bool | ssl.SSLContext


class ContractError(ValueError):
    """The answer would be dropped or misdrawn by the app."""


class SmokeError(RuntimeError):
    """The endpoint did not answer like the app needs."""


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Detection:
    label: str
    label_id: int
    top_left: Point
    bottom_right: Point
    score: float


@dataclass(frozen=True)
class SmokeResult:
    status: int
    latency_ms: float
    detections: list[Detection]

    @property
    def in_time(self) -> bool:
        """Within the app's deadline: the app would draw this answer."""
        return self.latency_ms <= APP_TIMEOUT_S * 1000

    def late_warning(self) -> str | None:
        """What the app would do with an answer this slow, or None when it is in time."""
        if self.in_time:
            return None
        return (
            f"the answer took {self.latency_ms / 1000:.1f} s, past the app's {APP_TIMEOUT_S:g} s "
            "deadline: the app would drop it, show nothing for that frame and send its next one"
        )


def make_test_jpeg(
    width: int = APP_WIDTH, height: int = 960, quality: int = APP_JPEG_QUALITY, seed: int = 0
) -> bytes:
    """A camera-like frame: textured background and coloured boxes, as the app encodes it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1 = min(width - 1, x0 + int(rng.integers(30, max(31, width // 4))))
        y1 = min(height - 1, y0 + int(rng.integers(30, max(31, height // 3))))
        colour = tuple(int(value) for value in rng.integers(0, 255, size=3))
        draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def parse_like_app(body: bytes | str) -> list[Detection]:
    """Parse a 2xx body the way the app does: wrap as {"objects": body}, then read fields."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    if "[" not in text:
        raise ContractError(f"body has no '[': the app drops it (got {text[:120]!r})")
    try:
        wrapped = json.loads('{"objects": ' + text + "}")
    except json.JSONDecodeError as err:
        raise ContractError(f"body is not a JSON array: {err}") from err
    objects = wrapped["objects"]
    if not isinstance(objects, list):
        raise ContractError(f"top level is {type(objects).__name__}, not an array")
    return [_detection(item, index) for index, item in enumerate(objects)]


def _detection(item: Any, index: int) -> Detection:
    where = f"element {index}"
    if not isinstance(item, dict):
        raise ContractError(f"{where} is not an object")
    label, label_id, box = item.get("label"), item.get("label_id"), item.get("box")
    score: Any = item.get("score")
    if not isinstance(label, str) or not label:
        raise ContractError(f"{where}: 'label' must be a class name string, got {label!r}")
    if not isinstance(label_id, int) or isinstance(label_id, bool):
        raise ContractError(f"{where}: 'label_id' must be an integer, got {label_id!r}")
    if not _is_number(score) or not 0.0 <= score <= 1.0:
        raise ContractError(f"{where}: 'score' must be a number in 0..1, got {score!r}")
    if not isinstance(box, dict):
        raise ContractError(f"{where}: 'box' must be an object")
    top_left = _point(box.get("top_left"), f"{where}.box.top_left")
    bottom_right = _point(box.get("bottom_right"), f"{where}.box.bottom_right")
    if bottom_right.x < top_left.x or bottom_right.y < top_left.y:
        raise ContractError(f"{where}: bottom_right lies above or left of top_left")
    return Detection(label, label_id, top_left, bottom_right, float(score))


def _point(value: Any, where: str) -> Point:
    if not isinstance(value, dict) or not all(_is_number(value.get(axis)) for axis in "xy"):
        raise ContractError(f"{where} must be {{'x': number, 'y': number}}, got {value!r}")
    return Point(float(value["x"]), float(value["y"]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_in_frame(detections: list[Detection], width: int, height: int) -> None:
    """Boxes are pixels of the sent image, so they must lie inside it."""
    for detection in detections:
        for point in (detection.top_left, detection.bottom_right):
            if not (0 <= point.x <= width and 0 <= point.y <= height):
                raise ContractError(
                    f"box corner ({point.x}, {point.y}) of {detection.label} lies outside "
                    f"the {width}x{height} image that was sent"
                )


def post_image(
    url: str, image: bytes, timeout_s: float = APP_TIMEOUT_S, verify: Verify = False
) -> httpx.Response:
    """POST exactly as the app does: URL as stored, image/jpg, any certificate accepted."""
    with httpx.Client(verify=verify, timeout=timeout_s) as client:
        return client.post(url, content=image, headers={"Content-Type": APP_CONTENT_TYPE})


def smoke(
    url: str, *, image: bytes | None = None, timeout_s: float = 10.0, verify: Verify = False
) -> SmokeResult:
    """One request like the app's; raise SmokeError unless the app would use the answer."""
    image = image if image is not None else make_test_jpeg()
    width, height = Image.open(io.BytesIO(image)).size
    started = time.perf_counter()
    try:
        response = post_image(url, image, timeout_s, verify)
    except httpx.HTTPError as err:
        raise SmokeError(f"POST {redact(url)} failed: {type(err).__name__}: {err}") from err
    latency_ms = (time.perf_counter() - started) * 1000
    if not response.is_success:
        raise SmokeError(f"POST {redact(url)} answered {response.status_code}: {response.text[:300]}")
    try:
        detections = parse_like_app(response.content)
        check_in_frame(detections, width, height)
    except ContractError as err:
        raise SmokeError(f"answer breaks the app's contract: {err}") from err
    return SmokeResult(response.status_code, latency_ms, detections)
