"""Hostile bodies over real HTTP to a real TorchServe: served, or a 4xx with JSON; no worker dies.

`test_torchserve.py` covers the handful of classic bad inputs one by one; this
suite throws the whole catalogue at the server (every image format and colour
mode, corrupt and truncated files, bombs, wrong and missing content types,
forms, chunked and oversize bodies, random bytes of many sizes), then the same
catalogue concurrently, mixed with valid frames so bad requests share batches
with good ones. After each wave a valid app request must succeed, and the
worker PIDs must be the ones from before (no worker was killed or restarted).
The counts are printed (`-s`).
"""

from __future__ import annotations

import concurrent.futures
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from serving.contract import APP_CONTENT_TYPE, parse_like_app, post_image
from synthdet.local_serve import LocalServer
from tests.support.images import bomb_png, encode, make_test_jpeg, photo, sixteen_bit_png
from tests.support.torchserve import worker_pids

pytestmark = pytest.mark.integration

SERVED = 200
TIMEOUT_S = 120  # CPU inference, several requests queued behind each other


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str | None  # None: no Content-Type header at all
    expect: int  # 200 (served, JSON array) or the 4xx status
    chunked: bool = False


def _flip(data: bytes, seed: int, count: int = 12) -> bytes:
    """Overwrite bytes in the middle (scan data), keeping the header intact."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        out[rng.randrange(len(out) // 4, len(out))] = rng.randrange(256)
    return bytes(out)


def _catalogue() -> dict[str, Case]:
    image = photo(320, 240, seed=31)
    jpeg = make_test_jpeg(640, 480, seed=32)
    png = encode(image, "PNG")
    rng = random.Random(33)
    cases: dict[str, Case] = {
        # Every form a valid image may take: served whatever the Content-Type says.
        "jpeg as image/jpg": Case(jpeg, APP_CONTENT_TYPE, SERVED),
        "png": Case(png, "image/png", SERVED),
        "png as image/jpg": Case(png, APP_CONTENT_TYPE, SERVED),
        "gif": Case(encode(image.convert("P"), "GIF"), "image/gif", SERVED),
        "webp": Case(encode(image, "WEBP"), "image/webp", SERVED),
        "tiff": Case(encode(image, "TIFF"), "image/tiff", SERVED),
        "bmp": Case(encode(image, "BMP"), "image/bmp", SERVED),
        "cmyk jpeg": Case(encode(image.convert("CMYK"), "JPEG"), APP_CONTENT_TYPE, SERVED),
        "grayscale jpeg": Case(encode(image.convert("L"), "JPEG"), APP_CONTENT_TYPE, SERVED),
        "rgba png": Case(encode(image.convert("RGBA"), "PNG"), "image/png", SERVED),
        "16-bit png": Case(sixteen_bit_png(), "image/png", SERVED),
        "16-bit tiff": Case(encode(Image.open(_io(sixteen_bit_png())), "TIFF"), "image/tiff", SERVED),
        "1x1 jpeg": Case(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "JPEG"), APP_CONTENT_TYPE, SERVED),
        "1x1 png": Case(encode(Image.new("L", (1, 1)), "PNG"), "image/png", SERVED),
        "jpeg as application/json": Case(jpeg, "application/json", SERVED),
        "jpeg as text/plain": Case(jpeg, "text/plain", SERVED),
        "jpeg as octet-stream": Case(jpeg, "application/octet-stream", SERVED),
        "jpeg with charset param": Case(jpeg, "image/jpg; charset=utf-8", SERVED),
        "jpeg without content-type": Case(jpeg, None, SERVED),
        # `curl --data-binary @img.jpg URL` labels it a form: the body decides.
        "jpeg as x-www-form-urlencoded": Case(jpeg, "application/x-www-form-urlencoded", SERVED),
        # `curl -F data=@img.jpg URL`: a real multipart form, the image in field `data`.
        "jpeg in a multipart form": Case(
            _multipart(jpeg), f"multipart/form-data; boundary={BOUNDARY}", SERVED
        ),
        "jpeg chunked": Case(jpeg, APP_CONTENT_TYPE, SERVED, chunked=True),
        # Everything else: a 4xx with a JSON message.
        "empty": Case(b"", APP_CONTENT_TYPE, 400),
        "empty without content-type": Case(b"", None, 400),
        "one byte": Case(b"\xff", APP_CONTENT_TYPE, 415),
        "truncated jpeg (header only)": Case(jpeg[:200], APP_CONTENT_TYPE, 400),
        "truncated jpeg (half)": Case(jpeg[: len(jpeg) // 2], APP_CONTENT_TYPE, 400),
        "truncated png": Case(png[: len(png) // 2], "image/png", 400),
        "jpeg magic then zeros": Case(b"\xff\xd8\xff\xe0" + bytes(4000), APP_CONTENT_TYPE, 415),
        "png signature only": Case(png[:8], "image/png", 415),
        "decompression bomb png": Case(bomb_png(), "image/png", 413),
        "huge gif header": Case(_huge_gif(), "image/gif", 413),
        "thin strip 4000x1": Case(encode(Image.new("L", (4000, 1)), "PNG"), "image/png", 400),
        "svg": Case(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/svg+xml", 415),
        "json": Case(b'{"image": "aGVsbG8="}', "application/json", 415),
        "text": Case("grüße\n".encode() * 100, "text/plain; charset=utf-8", 415),
        "html": Case(b"<html><script>alert(1)</script></html>", "text/html", 415),
        "form urlencoded": Case(b"a=1&b=2", "application/x-www-form-urlencoded", 415),
        "pdf": Case(b"%PDF-1.4\n" + bytes(rng.randrange(256) for _ in range(2000)), "application/pdf", 415),
        "zip": Case(b"PK\x03\x04" + bytes(600), "application/zip", 415),
        "random 1 kB chunked": Case(rng.randbytes(1024), APP_CONTENT_TYPE, 415, chunked=True),
    }
    for size in (16, 1000, 100_000, 1_500_000):
        cases[f"random {size} bytes"] = Case(rng.randbytes(size), APP_CONTENT_TYPE, 415)
    for seed in range(3):
        # Corrupt scan data may still decode (to a garbled picture): served or 400 are both right.
        cases[f"corrupted jpeg #{seed}"] = Case(_flip(jpeg, seed), APP_CONTENT_TYPE, -1)
    return cases


BOUNDARY = "synthdet-test-boundary"


def _multipart(data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="data"; filename="frame.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _io(data: bytes) -> object:
    import io

    return io.BytesIO(data)


def _huge_gif() -> bytes:
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = (65535).to_bytes(2, "little") + (65535).to_bytes(2, "little")
    return bytes(data)


CASES = _catalogue()
RESULTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    lines = "\n".join(f"  {key}: {count}" for key, count in sorted(RESULTS.items()))
    print(f"\nhostile HTTP: {sum(RESULTS.values())} requests\n{lines}")


def send(client: httpx.Client, url: str, case: Case) -> httpx.Response:
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    if case.chunked:
        # An iterator body makes httpx use Transfer-Encoding: chunked (no Content-Length).
        return client.post(url, content=iter([case.body[:100], case.body[100:]]), headers=headers)
    return client.post(url, content=case.body, headers=headers)


def check(name: str, case: Case, response: httpx.Response) -> None:
    """Served: 200 and a JSON array the app parses. Refused: the 4xx with a JSON message."""
    status = response.status_code
    RESULTS[f"{'served' if status == SERVED else status}"] += 1
    if status == SERVED:
        assert case.expect in (SERVED, -1), f"{name}: served, expected {case.expect}"
        assert isinstance(parse_like_app(response.content), list)
        return
    assert 400 <= status < 500, f"{name}: {status} {response.text[:300]}"
    assert case.expect in (status, -1), f"{name}: {status}, expected {case.expect}: {response.text[:300]}"
    body = response.json()
    assert body.get("error") or body.get("message"), f"{name}: no JSON message: {body}"


def test_each_hostile_body_alone_then_a_valid_request(torchserve: LocalServer) -> None:
    url = torchserve.prediction_url("synthdet")
    pids = worker_pids(torchserve)
    valid = make_test_jpeg(320, 240, seed=34)
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for name, case in CASES.items():
            response = send(client, url, case)
            check(name, case, response)
            if response.status_code != SERVED:  # (after a served one, serving is proven)
                after = post_image(url, valid, timeout_s=TIMEOUT_S)
                assert after.status_code == SERVED, f"after {name}: {after.status_code} {after.text[:300]}"
    assert worker_pids(torchserve) == pids, "a worker died or was restarted"


def test_put_is_served_like_post_and_other_methods_are_json_errors(torchserve: LocalServer) -> None:
    """`curl -T img.jpg URL` (TorchServe's own docs) sends a PUT."""
    url = torchserve.prediction_url("synthdet")
    jpeg = make_test_jpeg(320, 240, seed=37)
    with httpx.Client(timeout=TIMEOUT_S) as client:
        put = client.put(url, content=jpeg)
        assert put.status_code == SERVED and parse_like_app(put.content) == parse_like_app(
            post_image(url, jpeg, timeout_s=TIMEOUT_S).content
        )
        for method in ("DELETE", "PATCH", "OPTIONS"):
            response = client.request(method, url)
            assert response.status_code == 405 and response.json()["code"] == 405, method
        missing = client.post(url.replace("/synthdet", "/nope"), content=jpeg)
        assert missing.status_code == 404 and missing.json()["code"] == 404
        assert client.get(url.rsplit("/predictions", 1)[0] + "/models").status_code == 404


def test_the_catalogue_at_once_mixed_with_valid_frames(torchserve: LocalServer) -> None:
    """Bad bodies share batches with good ones; each gets its own answer."""
    url = torchserve.prediction_url("synthdet")
    pids = worker_pids(torchserve)
    valid = Case(make_test_jpeg(320, 240, seed=35), APP_CONTENT_TYPE, SERVED)
    # Every refused case, a few served forms and valid frames (CPU inference is
    # slow: each served request costs a forward pass of ~3 s).
    refused = [(name, case) for name, case in CASES.items() if case.expect != SERVED]
    forms = [(name, CASES[name]) for name in ("png", "cmyk jpeg", "16-bit png", "jpeg without content-type")]
    jobs = refused + forms + [(f"valid #{i}", valid) for i in range(4)]
    random.Random(36).shuffle(jobs)
    with httpx.Client(timeout=TIMEOUT_S) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(send, client, url, case): (name, case) for name, case in jobs}
        for future in concurrent.futures.as_completed(futures):
            name, case = futures[future]
            check(name, case, future.result())
    assert post_image(url, valid.body, timeout_s=TIMEOUT_S).status_code == SERVED
    assert worker_pids(torchserve) == pids, "a worker died or was restarted"


def test_oversize_bodies_are_413_and_harmless(torchserve: LocalServer) -> None:
    """The fixture caps bodies at 2 MiB: a 3 MiB JPEG-looking body and a 20 MiB one."""
    url = torchserve.prediction_url("synthdet")
    pids = worker_pids(torchserve)
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for size in (3 * 1024 * 1024, 20 * 1024 * 1024):
            body = b"\xff\xd8\xff\xe0" + bytes(size)
            response = client.post(url, content=body, headers={"Content-Type": APP_CONTENT_TYPE})
            RESULTS[str(response.status_code)] += 1
            assert response.status_code == 413, response.text[:300]
            # The front refuses it before TorchServe (or any worker) sees it, in JSON like
            # nginx on a deployed host (tests/system/test_exposure.py).
            assert response.json() == {
                "code": 413,
                "error": "request body too large (the limit is 2097152 bytes)",
            }
    assert post_image(url, make_test_jpeg(320, 240), timeout_s=TIMEOUT_S).status_code == SERVED
    assert worker_pids(torchserve) == pids


def test_get_only_ever_returns_the_static_viewer_page(torchserve: LocalServer) -> None:
    """A GET (a browser, a scanner, a crawler) never reaches TorchServe and reflects nothing."""
    url = torchserve.prediction_url("synthdet")
    pids = worker_pids(torchserve)
    with httpx.Client(timeout=TIMEOUT_S) as client:
        page = client.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        probes = {
            "script in the query": client.get(url, params={"q": "<script>alert(1)</script>"}),
            "an image body with a GET": client.request("GET", url, content=make_test_jpeg(320, 240)),
            "a range": client.get(url, headers={"Range": "bytes=0-10"}),
            "asking for JSON": client.get(url, headers={"Accept": "application/json"}),
        }
        for name, response in probes.items():
            RESULTS[f"GET {response.status_code}"] += 1
            assert response.status_code == 200 and response.content == page.content, name
            assert response.headers["content-security-policy"] == page.headers["content-security-policy"]
        head = client.head(url)
        assert head.status_code == 200 and head.content == b""
        # An encoded traversal names no model: a JSON 404, never TorchServe's management API.
        escaped = client.get(url + "%2F..%2F..%2Fmodels")
        assert escaped.status_code == 404 and escaped.json()["code"] == 404
        assert post_image(url, make_test_jpeg(320, 240), timeout_s=TIMEOUT_S).status_code == SERVED
    assert worker_pids(torchserve) == pids
