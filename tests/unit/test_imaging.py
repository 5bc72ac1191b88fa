"""The decode path: every image form a client sends, and every way input goes bad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ToTensor

from handler.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage, RequestError
from handler.imaging import decode_image, request_bytes, to_tensor
from tests.support.images import bomb_png, encode, photo, sixteen_bit_png, with_exif_orientation

LIMIT = 40_000_000


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("JPEG", "CMYK"),
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "P"),
        ("PNG", "1"),
        ("WEBP", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("TIFF", "CMYK"),
    ],
)
def test_every_common_form_decodes_to_rgb_of_the_same_size(fmt: str, mode: str) -> None:
    image = photo(96, 64).convert(mode)
    decoded = decode_image(encode(image, fmt), LIMIT)
    assert decoded.mode == "RGB"
    assert decoded.size == (96, 64)


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    decoded = np.asarray(decode_image(sixteen_bit_png(), LIMIT))
    # A 0..65535 ramp must span 0..255, not saturate at 255 after the first 1/256.
    assert decoded.min() == 0 and decoded.max() == 255
    assert 100 < decoded.mean() < 155


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(decode_image(encode(image, "PNG"), LIMIT)).min() == 255


@pytest.mark.parametrize(("orientation", "size"), [(1, (120, 80)), (6, (80, 120)), (3, (120, 80))])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    decoded = decode_image(with_exif_orientation(photo(120, 80), orientation), LIMIT)
    assert decoded.size == size


def test_tensor_matches_torchvision_to_tensor_bit_for_bit() -> None:
    image = photo(64, 48)
    assert torch.equal(to_tensor(image), ToTensor()(image))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not an image at all", NotAnImage),
        (bytes(range(256)) * 20, NotAnImage),
        (b"%PDF-1.4\n", NotAnImage),
    ],
)
def test_non_images_are_refused_as_unsupported(body: bytes, error: type[RequestError]) -> None:
    with pytest.raises(error) as caught:
        decode_image(body, LIMIT)
    assert caught.value.status == 415


def test_truncated_jpeg_is_a_400() -> None:
    jpeg = encode(photo(200, 150), "JPEG")
    with pytest.raises(CorruptImage) as caught:
        decode_image(jpeg[: len(jpeg) // 2], LIMIT)
    assert caught.value.status == 400


def test_corrupted_png_is_a_400() -> None:
    png = bytearray(encode(photo(64, 64), "PNG"))
    png[60:90] = b"\x00" * 30  # inside the image data: checksum fails
    with pytest.raises(CorruptImage):
        decode_image(bytes(png), LIMIT)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = bomb_png()
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(bomb, LIMIT)
    assert caught.value.status == 413
    assert "too large" in caught.value.message


def test_absurd_aspect_ratio_is_refused() -> None:
    with pytest.raises(CorruptImage, match="aspect ratio"):
        decode_image(encode(Image.new("RGB", (5000, 10)), "PNG"), LIMIT)


def test_one_pixel_image_is_served() -> None:
    assert decode_image(encode(Image.new("RGB", (1, 1), "red"), "PNG"), LIMIT).size == (1, 1)


@pytest.mark.parametrize("request_", [{}, {"body": b""}, {"data": bytearray()}, {"body": None}])
def test_empty_bodies_are_a_400(request_: dict[str, object]) -> None:
    with pytest.raises(EmptyBody) as caught:
        request_bytes(request_)
    assert caught.value.status == 400


def test_body_or_data_whichever_torchserve_fills() -> None:
    assert request_bytes({"data": bytearray(b"abc")}) == b"abc"
    assert request_bytes({"body": b"xyz"}) == b"xyz"


def test_bodies_torchserve_decoded_as_json_are_refused() -> None:
    with pytest.raises(NotAnImage, match="JSON or text"):
        request_bytes({"body": {"image": "..."}})


def test_error_json_names_code_and_message() -> None:
    err = ImageTooLarge("too big")
    assert err.to_json() == '{"code": 413, "error": "too big"}'
