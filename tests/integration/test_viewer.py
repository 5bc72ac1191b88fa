"""The web viewer in a real browser (headless Chromium with a fake camera).

First against a recording server, which answers every frame with the same two
detections after a delay, so the page's own behaviour can be checked exactly:
what it sends (the app's JPEG, size and Content-Type), how many frames it keeps
in flight, what it draws and lists, the threshold slider and the pause button.
Then on `synthdet serve` with a real model: live frames in, detections out. The
same page through nginx on a deployed host: tests/system/test_viewer_deployed.py.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.support.ui import WebDriverWait

from handler.labels import load_label_names
from serving.viewer import content_security_policy, viewer_page
from synthdet.local_serve import LocalServer
from tests.support.browser import (
    chromium,
    page_value,
    painted_pixels,
    require_chromium,
    save_screenshot,
    set_threshold,
    wait_for,
    wait_for_animation_frames,
    wait_for_labels,
    write_y4m,
)
from tests.support.loopback import loopback_endpoint

pytestmark = pytest.mark.integration

CANNED = [
    {
        "label": "cereal_cheerios_honeynut",
        "label_id": 5,
        "box": {"top_left": {"x": 100.0, "y": 80.0}, "bottom_right": {"x": 500.0, "y": 400.0}},
        "score": 0.99,
    },
    {
        "label": "snack_granola_bars",
        "label_id": 40,
        "box": {"top_left": {"x": 700.0, "y": 200.0}, "bottom_right": {"x": 900.0, "y": 500.0}},
        "score": 0.8,
    },
    {  # a second box of the first class: listed once, with its count
        "label": "cereal_cheerios_honeynut",
        "label_id": 5,
        "box": {"top_left": {"x": 520.0, "y": 80.0}, "bottom_right": {"x": 680.0, "y": 300.0}},
        "score": 0.6,
    },
]
# Where the README's screenshot comes from (`SYNTHDET_SCREENSHOTS=docs/images ./dev test ...`).
SCREENSHOTS = os.environ.get("SYNTHDET_SCREENSHOTS")


class Recorder:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        # "ok": the canned detections; "busy": 503 + Retry-After as a full server answers;
        # "garbage": a 200 whose body is not the app's detection list.
        self.mode = "ok"
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []  # monotonic time of every POST, whatever the answer
        self.posts: list[tuple[str, tuple[int, int], str]] = []  # (content type, JPEG size, format)

    def posts_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(start <= at < end for at in self.arrivals)


BUSY_RETRY_AFTER_S = 2


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    state = Recorder(delay_s=0.4)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            body = viewer_page()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", content_security_policy())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            data = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.arrivals.append(time.monotonic())
                mode = state.mode
            if mode != "ok":
                self.answer_without_detections(mode)
                return
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            image = Image.open(io.BytesIO(data))
            time.sleep(state.delay_s)
            with state.lock:
                state.posts.append((self.headers["Content-Type"], image.size, image.format or ""))
                state.in_flight -= 1
            body = json.dumps(CANNED).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def answer_without_detections(self, mode: str) -> None:
            busy = mode == "busy"
            body = json.dumps({"error": "busy, retry"} if busy else {"not": "a list"}).encode()
            self.send_response(503 if busy else 200)
            self.send_header("Content-Type", "application/json")
            if busy:
                self.send_header("Retry-After", str(BUSY_RETRY_AFTER_S))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_endpoint(Handler) as url:
        yield state, url


def page_text(driver: object, element: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element}').textContent"))  # type: ignore[attr-defined]


def test_the_page_streams_like_the_app_draws_and_filters(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    require_chromium()
    state, url = recorder
    camera = write_y4m(tmp_path / "camera.y4m", size=(1280, 720))
    with chromium(tmp_path, camera=camera) as driver:
        driver.get(url)
        # The app's default threshold (0.98): only the 0.99 detection is listed.
        wait_for(driver, "document.getElementById('labels').textContent.includes('cereal')")
        assert page_text(driver, "labels") == "cereal_cheerios_honeynut 0.99"
        assert painted_pixels(driver) > 1000  # boxes and captions drawn over the video
        assert wait_for(driver, "document.getElementById('rtt').textContent.endsWith(' ms')")
        assert float(driver.execute_script("return document.getElementById('fps').textContent")) > 0
        set_threshold(driver, 0.5)
        assert page_text(driver, "labels") == "cereal_cheerios_honeynut 0.99 ×2, snack_granola_bars 0.80"
        # Pause: the frames in flight are answered, then no more are sent.
        driver.find_element("id", "pause").click()
        wait_for(driver, "inFlight === 0")
        paused_at = int(page_value(driver, "sent"))  # frames the page sent in all
        assert len(state.posts) == paused_at  # each reached the server
        # 90 turns of the page's loop (1.5 s at 60 Hz; unpaused it sends every 0.2 s).
        wait_for_animation_frames(driver, 90)
        assert page_value(driver, "sent") == paused_at and len(state.posts) == paused_at
        driver.find_element("id", "pause").click()
        WebDriverWait(driver, 10, poll_frequency=0.2).until(
            lambda _: len(state.posts) > paused_at, "resume did not send again"
        )
        # Portrait: the page follows the rotation; boxes are redrawn for the new size.
        driver.set_window_size(420, 860)
        wait_for(driver, "document.getElementById('overlay').getBoundingClientRect().width < 500")
        assert painted_pixels(driver) > 500
    # Every frame as the app sends it: JPEG, 1280 px wide, Content-Type image/jpg.
    assert state.posts
    assert {content_type for content_type, _, _ in state.posts} == {"image/jpg"}
    assert {size for _, size, _ in state.posts} == {(1280, 720)}
    assert {fmt for _, _, fmt in state.posts} == {"JPEG"}
    # A slow server (0.4 s an answer) never gets more than a few at once: frames are dropped.
    assert 1 <= state.max_in_flight <= 3


def test_a_busy_server_is_given_its_retry_after_and_a_bad_answer_breaks_nothing(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    require_chromium()
    state, url = recorder
    state.delay_s = 0.05
    camera = write_y4m(tmp_path / "camera.y4m", size=(1280, 720))
    with chromium(tmp_path, camera=camera) as driver:
        driver.get(url)
        wait_for(driver, "document.getElementById('labels').textContent.includes('cereal')")
        answered = state.posts_between(0, time.monotonic())
        assert answered >= 1
        # Every frame refused with Retry-After 2: the page waits as told between posts instead
        # of posting at its 5 frames a second (0.2 s apart), says the server is busy, and its
        # frame rate falls to zero instead of showing the last good figure.
        with state.lock:
            state.mode = "busy"
            switched = time.monotonic()
        WebDriverWait(driver, 30, poll_frequency=0.1).until(
            lambda _: state.posts_between(switched, time.monotonic()) >= 4, "the page stopped posting"
        )
        with state.lock:
            refused_at = [at for at in state.arrivals if at >= switched]
        gaps = [later - earlier for earlier, later in zip(refused_at, refused_at[1:], strict=False)]
        # A frame may have been on its way when the first refusal came; after that, one post
        # each time the Retry-After has passed (at the page's next frame, 0.2 s at most).
        assert all(0.9 * BUSY_RETRY_AFTER_S <= gap <= BUSY_RETRY_AFTER_S + 2 for gap in gaps[-2:]), gaps
        assert wait_for(driver, "document.getElementById('fps').textContent === '0.0'", timeout_s=10)
        assert "busy" in page_text(driver, "status")
        assert page_text(driver, "labels") == "cereal_cheerios_honeynut 0.99"  # the last good frame
        # A 200 that is not a detection list: said plainly; the last boxes stay usable.
        with state.lock:
            state.mode = "garbage"
        assert wait_for(driver, "document.getElementById('status').textContent.includes('not a list')")
        set_threshold(driver, 0.5)
        assert page_text(driver, "labels") == "cereal_cheerios_honeynut 0.99 ×2, snack_granola_bars 0.80"
        # Back to normal: answers flow again and the message goes.
        with state.lock:
            state.mode = "ok"
        assert wait_for(driver, "document.getElementById('status').textContent === ''")
        assert wait_for(driver, "parseFloat(document.getElementById('fps').textContent) > 0")


def test_without_a_camera_the_page_says_what_to_do(recorder: tuple[Recorder, str], tmp_path: Path) -> None:
    require_chromium()
    _, url = recorder
    with chromium(tmp_path) as driver:  # no fake camera: headless Chromium has none
        driver.get(url)
        wait_for(driver, "document.body.classList.contains('failed')")
        title = driver.execute_script("return document.getElementById('help-title').textContent")
        assert title in ("No camera found", "Camera access was refused", "The camera could not start")
        help_text = driver.execute_script("return document.getElementById('help').innerText")
        assert "self-signed certificate" in help_text and "Try again" in help_text


def test_live_detections_from_synthdet_serve(torchserve: LocalServer, tmp_path: Path) -> None:
    require_chromium()
    names = set(load_label_names())
    camera = write_y4m(tmp_path / "camera.y4m", size=(1280, 960))
    with chromium(tmp_path, camera=camera) as driver:
        driver.get(torchserve.prediction_url("synthdet"))  # http://127.0.0.1: a secure context
        set_threshold(driver, 0.5)  # an untrained model is never 0.98 sure
        # CPU inference: a few seconds a frame; the page waits for its answers.
        shown = wait_for_labels(driver, timeout_s=240)
        assert shown and shown <= names
        assert painted_pixels(driver) > 1000
        if SCREENSHOTS:
            set_threshold(driver, 0.7)  # fewer of an untrained model's many boxes
            # A frame sent from now on, answered and drawn.
            wait_for(driver, f"drawnSeq > {int(page_value(driver, 'sent'))}", timeout_s=240)
            save_screenshot(driver, Path(SCREENSHOTS) / "viewer.jpg")
