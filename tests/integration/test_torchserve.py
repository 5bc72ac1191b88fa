"""Real TorchServe, real HTTP, requests exactly as the SynthDet Viewer sends them."""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from serving.contract import APP_CONTENT_TYPE, check_in_frame, parse_like_app, post_image
from serving.polling import poll
from synthdet.local_serve import LocalServer
from synthdet.reference import load_reference_model, reference_detections
from tests.support.images import bomb_png, encode, make_test_jpeg, photo
from tests.support.matching import assert_same_detections
from tests.support.torchserve import worker_pids

pytestmark = pytest.mark.integration


def test_app_request_is_answered_in_the_apps_format(torchserve: LocalServer, unity_checkpoint: Path) -> None:
    image = make_test_jpeg(1280, 960, quality=75, seed=11)
    response = post_image(torchserve.prediction_url("synthdet"), image, timeout_s=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    detections = parse_like_app(response.content)  # wraps as {"objects": body}, as the app does
    check_in_frame(detections, 1280, 960)
    reference = reference_detections(load_reference_model(unity_checkpoint), image)
    assert_same_detections(response.json(), reference)


def test_second_model_is_served_side_by_side(torchserve: LocalServer, other_checkpoint: Path) -> None:
    image = make_test_jpeg(1280, 590, seed=12)
    response = post_image(torchserve.prediction_url("other"), image, timeout_s=60)
    assert response.status_code == 200
    assert_same_detections(
        response.json(), reference_detections(load_reference_model(other_checkpoint), image)
    )


def test_ping_on_the_same_address(torchserve: LocalServer) -> None:
    response = httpx.get(f"{torchserve.base_url()}/ping", timeout=5)
    assert response.status_code == 200 and response.json()["status"] == "Healthy"


HOSTILE = {
    "empty": (b"", APP_CONTENT_TYPE, 400),
    "random bytes": (bytes(range(256)) * 40, APP_CONTENT_TYPE, 415),
    "truncated jpeg": (make_test_jpeg(640, 480)[:9000], APP_CONTENT_TYPE, 400),
    "decompression bomb": (bomb_png(), "image/png", 413),
    "json body": (b'{"image": "aGVsbG8="}', "application/json", 415),
    "text body": (b"hello there", "text/plain", 415),
    "form body": (b"a=1&b=2", "application/x-www-form-urlencoded", 415),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_bad_input_gets_4xx_json_and_the_worker_survives(torchserve: LocalServer, case: str) -> None:
    body, content_type, status = HOSTILE[case]
    pids = worker_pids(torchserve, "synthdet")
    url = torchserve.prediction_url("synthdet")
    response = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == status, response.text
    assert "error" in response.json() or "message" in response.json()
    valid = post_image(url, make_test_jpeg(320, 240, seed=13), timeout_s=60)
    assert valid.status_code == 200
    assert worker_pids(torchserve, "synthdet") == pids


def test_oversize_body_is_refused_with_413(torchserve: LocalServer) -> None:
    url = torchserve.prediction_url("synthdet")
    response = httpx.post(
        url, content=b"\xff" * (3 * 1024 * 1024), headers={"Content-Type": APP_CONTENT_TYPE}, timeout=60
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/json")
    assert "too large" in response.json()["error"]
    assert post_image(url, make_test_jpeg(320, 240), timeout_s=60).status_code == 200


@pytest.mark.parametrize(
    "how",
    [
        ["--data-binary", "@{image}"],  # sends Content-Type: application/x-www-form-urlencoded
        ["-T", "{image}"],  # a PUT, as the original README and TorchServe's docs say
        ["-H", "Content-Type: image/jpeg", "--data-binary", "@{image}"],
    ],
    ids=["data-binary", "upload-file", "data-binary as jpeg"],
)
def test_what_people_type_with_curl_is_served(
    torchserve: LocalServer, tmp_path: Path, how: list[str]
) -> None:
    """Plain curl, as a user tries the URL first: the body decides, not the label."""
    image = tmp_path / "img.jpg"
    image.write_bytes(make_test_jpeg(640, 480, seed=15))
    args = [arg.format(image=image) for arg in how]
    url = torchserve.prediction_url("synthdet")
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args, url], capture_output=True, text=True, timeout=120
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", (status, body, result.stderr)
    assert parse_like_app(body) == parse_like_app(post_image(url, image.read_bytes(), timeout_s=60).content)


def test_a_browser_gets_the_viewer_page(torchserve: LocalServer) -> None:
    response = httpx.get(torchserve.prediction_url("synthdet"), timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>SynthDet live viewer</title>" in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    # Self-contained: nothing is loaded from anywhere else (no src/href/url() off the page).
    assert not re.findall(r"""(?:src|href)\s*=|url\(|@import|<link""", response.text)
    assert httpx.get(torchserve.prediction_url("nope"), timeout=10).status_code == 404


def test_request_without_content_type_is_not_a_5xx(torchserve: LocalServer) -> None:
    request = httpx.Request("POST", torchserve.prediction_url("synthdet"), content=make_test_jpeg(320, 240))
    assert "Content-Type" not in request.headers
    with httpx.Client(timeout=60) as client:
        response = client.send(request)
    assert response.status_code == 200, response.text
    parse_like_app(response.content)


def test_other_image_forms_are_served(torchserve: LocalServer) -> None:
    url = torchserve.prediction_url("synthdet")
    image = photo(320, 240, seed=14)
    for body, content_type in [
        (encode(image, "PNG"), "image/png"),
        (encode(image.convert("CMYK"), "JPEG"), "image/jpeg"),
    ]:
        response = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=60)
        assert response.status_code == 200
        parse_like_app(response.content)


def test_five_in_flight_of_mixed_sizes_each_get_their_own_answer(torchserve: LocalServer) -> None:
    url = torchserve.prediction_url("synthdet")
    images = [make_test_jpeg(640, height, seed=20 + i) for i, height in enumerate([480, 296, 480, 360, 480])]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        together = list(pool.map(lambda image: post_image(url, image, timeout_s=120), images))
    assert [response.status_code for response in together] == [200] * 5, [r.text for r in together]
    for image, response in zip(images, together, strict=True):
        alone = post_image(url, image, timeout_s=60).json()
        assert response.json() == alone
        width, height = Image.open(io.BytesIO(image)).size
        check_in_frame(parse_like_app(json.dumps(alone)), width, height)


def handler_times_ms(torchserve: LocalServer, model: str) -> list[float]:
    """TorchServe's HandlerTime metric for `model`, one per batch, from model_metrics.log
    (the frontend writes the worker's lines as `HandlerTime.ms:4399.45|#ModelName:synthdet,...`)."""
    log = torchserve.log_path.parent / "model_metrics.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [float(ms) for ms in re.findall(rf"HandlerTime\.ms:([\d.]+)\|#ModelName:{model},", text)]


def test_torchserve_times_our_handler(torchserve: LocalServer) -> None:
    """BaseHandler.handle runs our preprocess/inference/postprocess and records HandlerTime."""
    before = len(handler_times_ms(torchserve, "synthdet"))
    started = time.monotonic()
    url = torchserve.prediction_url("synthdet")
    response = post_image(url, make_test_jpeg(640, 480, seed=14), timeout_s=60)
    round_trip_ms = (time.monotonic() - started) * 1000
    assert response.status_code == 200
    # The worker's metric line reaches the log through the frontend, a moment after the answer.
    done, times = poll(
        lambda: handler_times_ms(torchserve, "synthdet"),
        lambda times: len(times) > before,
        timeout_s=30,
        every_s=0.2,
    )
    assert done, f"no HandlerTime for synthdet in {torchserve.log_path.parent / 'model_metrics.log'}"
    assert 0 < times[-1] < round_trip_ms


def test_describe_through_the_management_api(torchserve: LocalServer) -> None:
    """`GET /models/NAME?customized=true`: TorchServe asks the handler (describe_handle)."""
    response = httpx.get(f"{torchserve.management_url}/models/synthdet?customized=true", timeout=60)
    assert response.status_code == 200, response.text
    described = response.json()[0]["customizedMetadata"]
    assert described["classes"][0] == "book_dorkdiaries_aladdin" and len(described["classes"]) == 63
    assert described["settings"]["score_threshold"] == 0.5
    # And the worker still serves predictions afterwards.
    url = torchserve.prediction_url("synthdet")
    assert post_image(url, make_test_jpeg(320, 240), timeout_s=60).status_code == 200
