"""Fuzzing the decode path: whatever bytes arrive, the answer is an RGB image or a 4xx.

The endpoint is public and TorchServe in front of the handler is archived
upstream, so the handler must hold against any body. The property checked on
every example: `request_bytes` + `decode_image` either return an 8-bit RGB image
within the pixel limit that `to_tensor` accepts, or raise a `RequestError` with
a 4xx status and a JSON message. Any other exception is a bug (in the server it
would cost the request a generic error and a log traceback).

Examples are bounded (300 per property, ~15 s in all on 2 cores) and
derandomised, so CI is repeatable; run with `--hypothesis-seed=random` and a
bigger `FUZZ_EXAMPLES` to search further. Counts of what happened are printed
at the end of the module (`pytest -s` or `-rA` shows them).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handler.errors import RequestError
from handler.imaging import decode_image, request_bytes, to_tensor
from tests.support.images import encode, photo

# Smaller than production (40 MP) so bombs are cheap to build and still caught.
LIMIT = 4_000_000
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # decoding time varies with the runner's load; the bound is checked below
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    total = sum(OUTCOMES.values())
    lines = [f"  {key}: {count}" for key, count in sorted(OUTCOMES.items())]
    print(f"\nfuzz_decode: {total} inputs\n" + "\n".join(lines))


def check(raw: bytes, family: str) -> str:
    """Decode like the handler does; assert the property; count and return the outcome."""
    try:
        image = decode_image(request_bytes({"body": raw}), LIMIT)
    except RequestError as err:
        assert 400 <= err.status < 500, (family, err.status, err)
        body = json.loads(err.to_json())
        assert body["code"] == err.status and body["error"], body
        outcome = f"{family} -> {err.status}"
    else:
        assert image.mode == "RGB"
        width, height = image.size
        assert width * height <= LIMIT
        tensor = to_tensor(image)
        assert tuple(tensor.shape) == (3, height, width)
        outcome = f"{family} -> served"
    OUTCOMES[outcome] += 1
    return outcome


# ------------------------------------------------------------------ strategies
FORMATS_AND_MODES = [
    ("JPEG", "RGB"),
    ("JPEG", "L"),
    ("JPEG", "CMYK"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "LA"),
    ("PNG", "P"),
    ("PNG", "1"),
    ("PNG", "I;16"),
    ("WEBP", "RGB"),
    ("WEBP", "RGBA"),
    ("GIF", "P"),
    ("GIF", "L"),
    ("BMP", "RGB"),
    ("BMP", "P"),
    ("TIFF", "RGB"),
    ("TIFF", "CMYK"),
    ("TIFF", "I;16"),
    ("TIFF", "I"),
    ("TIFF", "F"),
    ("TIFF", "LAB"),
]


_BASES = [photo(160, 120, seed=seed) for seed in range(3)]


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real image in a format and mode a client might send, 1x1 up to 160x120.

    Aspect ratios stay within 100:1: beyond that the handler refuses on purpose
    (Faster R-CNN's resize would shrink the short side to nothing).
    """
    fmt, mode = draw(st.sampled_from(FORMATS_AND_MODES))
    width = draw(st.integers(1, 160))
    height = draw(st.integers(max(1, -(-width // 100)), min(120, width * 100)))
    base = _BASES[draw(st.integers(0, len(_BASES) - 1))].resize((width, height))
    image = base.convert("L").convert(mode) if mode in ("I;16", "I", "F") else base.convert(mode)
    return f"{fmt}/{mode}", encode(image, fmt)


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Truncate, flip bytes, splice random bytes or duplicate a slice."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "duplicate"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            index = draw(st.integers(0, len(out) - 1))
            out[index] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    start = draw(st.integers(0, len(data) - 1))
    piece = data[start : start + draw(st.integers(1, 256))]
    return data[:start] + piece * draw(st.integers(2, 8)) + data[start:]


@st.composite
def corrupted_images(draw: st.DrawFn) -> tuple[str, bytes]:
    family, data = draw(valid_images())
    return f"corrupt {family.split('/')[0]}", _mutate(data, draw)


def _patched_png_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    return bytes(data)  # the CRC no longer matches: PIL may say corrupt or too large


@st.composite
def huge_headers(draw: st.DrawFn) -> tuple[str, bytes]:
    """Headers claiming up to 2^31 pixels a side, real bombs and extreme aspect ratios."""
    kind = draw(st.sampled_from(["png header", "gif header", "real bomb", "thin strip"]))
    if kind == "png header":
        return kind, _patched_png_size(draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1)))
    if kind == "gif header":
        data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
        data[6:8] = draw(st.integers(1, 65535)).to_bytes(2, "little")
        data[8:10] = draw(st.integers(1, 65535)).to_bytes(2, "little")
        return kind, bytes(data)
    if kind == "real bomb":
        side = draw(st.integers(2_001, 6_000))  # > LIMIT pixels, compresses to a few kB
        return kind, encode(Image.new("1", (side, side)), "PNG", optimize=True)
    long_side = draw(st.integers(101, 4000))
    return kind, encode(Image.new("L", (long_side, 1)), "PNG")


MAGICS = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
]


@st.composite
def magic_then_noise(draw: st.DrawFn) -> tuple[str, bytes]:
    """A format's magic number followed by noise: reaches each decoder's header parser."""
    magic = draw(st.sampled_from(MAGICS))
    return "magic+noise", magic + draw(st.binary(max_size=2048))


# ------------------------------------------------------------------ properties
@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_with_a_4xx(raw: bytes) -> None:
    check(raw, "random bytes")


@FUZZ
@given(magic_then_noise())
def test_format_magic_followed_by_noise_is_a_4xx_or_served(case: tuple[str, bytes]) -> None:
    check(case[1], case[0])


@FUZZ
@given(valid_images())
def test_valid_images_in_every_form_are_served(case: tuple[str, bytes]) -> None:
    family, data = case
    assert check(data, family).endswith("served")


@FUZZ
@given(corrupted_images())
def test_corrupted_and_truncated_images_are_a_4xx_or_served(case: tuple[str, bytes]) -> None:
    check(case[1], case[0])


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
@given(huge_headers())
def test_huge_claims_are_refused_before_decoding(case: tuple[str, bytes]) -> None:
    family, data = case
    outcome = check(data, family)
    if family == "real bomb":
        assert outcome.endswith("413")


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["body", "data", "file", "image"]),
        st.one_of(
            st.binary(max_size=64), st.text(max_size=32), st.none(), st.integers(), st.lists(st.integers())
        ),
        max_size=3,
    )
)
def test_any_request_shape_torchserve_may_hand_over(request_: dict[str, object]) -> None:
    """`request_bytes` sees what TorchServe decoded: bytes, text, JSON, forms, nothing."""
    try:
        raw = request_bytes(request_)
    except RequestError as err:
        assert 400 <= err.status < 500
        OUTCOMES[f"request shape -> {err.status}"] += 1
        return
    check(raw, "request shape")


def test_counts_cover_every_family() -> None:
    """Runs last in this module: the fuzzers above really exercised each family."""
    families = {key.split(" -> ")[0].split("/")[0] for key in OUTCOMES}
    assert {"random bytes", "magic+noise", "JPEG", "PNG", "real bomb"} <= families, families
    assert not any(key.endswith("served") for key in OUTCOMES if key.startswith("random bytes"))


def test_large_valid_photo_is_served_at_the_apps_size() -> None:
    """Not fuzzed (slow to build), but the frame the app sends must of course pass."""
    raw = encode(photo(1280, 960), "JPEG", quality=75)
    assert check(raw, "app frame").endswith("served")
    assert Image.open(io.BytesIO(raw)).size == (1280, 960)
