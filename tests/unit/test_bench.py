"""`synthdet bench`: percentile math, the app's pacing, and runs against a tiny local server."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthdet.bench import BenchConfig, Phone, Tally, frame_times, percentile, run_bench
from synthdet.cli import app
from tests.support.loopback import loopback_endpoint


@dataclass
class FakeApp:
    """What the tiny server saw, and how it answers."""

    delay_s: float = 0.0
    status: int = 200
    body: bytes = b"[]"
    content_types: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def fake() -> Iterator[tuple[FakeApp, str]]:
    state = FakeApp()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                state.content_types.append(self.headers["Content-Type"])
                state.sizes.append(Image.open(io.BytesIO(body)).size)
            time.sleep(state.delay_s)
            with state.lock:
                state.in_flight -= 1
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    with loopback_endpoint(Handler) as url:
        yield state, url


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [float(v) for v in np.random.default_rng(3).exponential(200, size=37)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_frames_every_fifth_of_a_second_within_the_duration() -> None:
    assert frame_times(10.0, 5, 1.0) == pytest.approx([10.0, 10.2, 10.4, 10.6, 10.8])
    assert len(frame_times(0.0, 5, 2.1)) == 11
    assert frame_times(0.0, 5, 0.1) == [0.0]


def test_a_frame_is_dropped_while_five_requests_are_in_flight() -> None:
    tally = Tally()
    phone = Phone(BenchConfig(url="http://127.0.0.1:9/x"), client=None, tally=tally, frames=[])  # type: ignore[arg-type]
    phone.in_flight = {object() for _ in range(4)}  # type: ignore[misc]
    assert phone.offer() is True
    phone.in_flight.add(object())  # type: ignore[arg-type]
    assert phone.offer() is False
    assert tally.dropped_frames == 1


def test_sends_app_frames_at_five_per_second(fake: tuple[FakeApp, str]) -> None:
    state, url = fake
    started = time.monotonic()
    result = run_bench(BenchConfig(url=url, phones=2, duration_s=1.0))
    assert 0.8 < time.monotonic() - started < 3
    assert result.sent == result.ok == 10  # 2 phones x 5 frames
    assert result.timeouts == result.errors == result.dropped_frames == 0
    assert set(state.content_types) == {"image/jpg"}
    assert {width for width, _ in state.sizes} == {1280}
    assert result.p50_ms is not None and result.p50_ms <= result.p90_ms <= result.p99_ms  # type: ignore[operator]


def test_never_more_than_five_in_flight_per_phone(fake: tuple[FakeApp, str]) -> None:
    state, url = fake
    state.delay_s = 1.3
    result = run_bench(BenchConfig(url=url, phones=1, duration_s=2.0, timeout_s=5))
    assert state.max_in_flight == 5
    assert result.dropped_frames >= 1
    assert result.sent + result.dropped_frames == 10
    assert result.ok == result.sent and result.p50_ms is not None and result.p50_ms >= 1300


def test_slow_answers_are_timeouts(fake: tuple[FakeApp, str]) -> None:
    state, url = fake
    state.delay_s = 0.6
    started = time.monotonic()
    result = run_bench(BenchConfig(url=url, phones=1, duration_s=0.4, timeout_s=0.2))
    assert time.monotonic() - started < 2  # bounded: stops by itself
    assert result.timeouts == result.sent == 2
    assert result.ok == 0 and result.p50_ms is None and result.throughput_rps == 0


@pytest.mark.parametrize(("status", "body"), [(500, b'{"code": 500}'), (200, b'{"objects": 1}')])
def test_answers_the_app_would_drop_are_errors(fake: tuple[FakeApp, str], status: int, body: bytes) -> None:
    state, url = fake
    state.status, state.body = status, body
    result = run_bench(BenchConfig(url=url, phones=1, duration_s=0.4))
    assert result.errors == result.sent == 2 and result.ok == result.refused == 0
    assert result.error_samples


LONG_BUSY = "the server is busy with other frames; retry " + "(a long explanation) " * 12


@pytest.mark.parametrize("status", [503, 429])
def test_busy_answers_are_refusals_not_errors_and_keep_the_whole_message(
    fake: tuple[FakeApp, str], status: int
) -> None:
    state, url = fake
    state.status, state.body = status, json.dumps({"code": status, "error": LONG_BUSY}).encode()
    result = run_bench(BenchConfig(url=url, phones=1, duration_s=0.4))
    assert result.refused == result.sent == 2 and result.errors == result.ok == 0
    assert result.refusal_samples == (f"HTTP {status}: {LONG_BUSY}",)  # whole, said once
    outcome = CliRunner().invoke(app, ["bench", url, "--duration", "0.4"])
    assert "refused 2" in outcome.output and "busy and said so" in outcome.output
    assert LONG_BUSY.strip() in " ".join(outcome.output.split())


def test_cli_prints_one_json_object(fake: tuple[FakeApp, str]) -> None:
    _state, url = fake
    outcome = CliRunner().invoke(app, ["bench", url, "--duration", "0.6", "--json"])
    assert outcome.exit_code == 0, outcome.output
    data = json.loads(outcome.stdout.strip().splitlines()[-1])
    for key in ("p50_ms", "p90_ms", "p99_ms", "throughput_rps", "timeouts", "errors"):
        assert key in data
    assert data["timeouts"] == data["errors"] == 0 and data["throughput_rps"] > 0


def test_cli_prints_a_table(fake: tuple[FakeApp, str]) -> None:
    _state, url = fake
    outcome = CliRunner().invoke(app, ["bench", url, "--duration", "0.4"])
    assert outcome.exit_code == 0, outcome.output
    assert "p50" in outcome.stdout and "throughput" in outcome.stdout
