"""Overload runs with `synthdet bench`: ~3x what the server can do, for 60 s.

The bench (bootstrap/bench.py) plays phones; here it is wrapped to also record
every answer's status, latency and Retry-After, so a test can tell "served in
time" from "refused fast" from "answered after the deadline".

Capacity is measured first (sequential app-sized frames: on CPU ~2-4 s each),
then one phone sends frames at 3x that rate. The bench's timeout (the deadline
the assertions use) is a multiple of the measured service time: on CPU the
app's own 2 s cannot be met even by an idle server, so "in time" means "not
queued behind others", which is what overload protection must guarantee.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from bootstrap import bench
from bootstrap.contract import make_test_jpeg, post_image

DURATION_S = 60.0
OVERLOAD_FACTOR = 3.0


@dataclass
class Answers:
    """Every answer the bench got: (status, latency in ms, Retry-After header)."""

    rows: list[tuple[int, float, str | None]] = field(default_factory=list)

    def statuses(self) -> Counter[int]:
        return Counter(status for status, _, _ in self.rows)

    def latencies(self, served: bool) -> list[float]:
        return [ms for status, ms, _ in self.rows if (status == 200) == served]


@dataclass
class OverloadRun:
    service_s: float
    offered_rps: float
    timeout_s: float
    result: bench.BenchResult
    answers: Answers

    def summary(self) -> str:
        served, refused = self.answers.latencies(True), self.answers.latencies(False)
        refused_p50 = statistics.median(refused) if refused else 0.0
        return (
            f"capacity ~{1 / self.service_s:.2f} rps ({self.service_s:.2f} s per frame), offered "
            f"{self.offered_rps:.2f} rps for {DURATION_S:.0f} s, deadline {self.timeout_s:.1f} s: "
            f"sent {self.result.sent}, served {self.result.ok} (p50 {self.result.p50_ms} ms, "
            f"max {max(served, default=0):.0f} ms, {self.result.throughput_rps:.2f} rps), "
            f"refused {dict(self.answers.statuses() - Counter({200: len(served)}))} "
            f"(p50 {refused_p50:.0f} ms, max {max(refused, default=0):.0f} ms), "
            f"timeouts {self.result.timeouts}, transport errors "
            f"{self.result.errors - len(refused)}"
        )


def measure_service_time(url: str, samples: int = 3) -> float:
    """Seconds one app frame takes on an otherwise idle server (median of a few)."""
    frame = make_test_jpeg(1280, 960, seed=90)
    post_image(url, frame, timeout_s=120)  # warm
    times = []
    for _ in range(samples):
        started = time.monotonic()
        response = post_image(url, frame, timeout_s=120)
        assert response.status_code == 200, response.text
        times.append(time.monotonic() - started)
    return statistics.median(times)


def run_overload(url: str, monkeypatch: pytest.MonkeyPatch, deadline_factor: float) -> OverloadRun:
    service_s = measure_service_time(url)
    answers = Answers()
    judge = bench.Phone._judge

    def recording_judge(self: bench.Phone, response: httpx.Response, latency_ms: float) -> None:
        answers.rows.append((response.status_code, latency_ms, response.headers.get("retry-after")))
        judge(self, response, latency_ms)

    monkeypatch.setattr(bench.Phone, "_judge", recording_judge)
    offered = OVERLOAD_FACTOR / service_s
    timeout_s = max(bench.APP_TIMEOUT_S, deadline_factor * service_s)
    config = bench.BenchConfig(
        url, phones=1, duration_s=DURATION_S, timeout_s=timeout_s, fps=offered, heights=(960,)
    )
    result = bench.run_bench(config)
    return OverloadRun(service_s, offered, timeout_s, result, answers)


def assert_refused_fast_and_nothing_late(run: OverloadRun, retry_after: bool) -> None:
    statuses = run.answers.statuses()
    refused = [row for row in run.answers.rows if row[0] != 200]
    assert run.result.timeouts == 0, f"answers came after the deadline: {run.summary()}"
    assert run.result.errors == len(refused), f"transport errors: {run.result.error_samples}"
    assert set(statuses) <= {200, 429, 503}, statuses
    assert refused, f"nothing was refused at 3x capacity: {run.summary()}"
    # Served at roughly capacity: overload must not starve the model either.
    assert run.result.ok >= 0.3 * DURATION_S / run.service_s, run.summary()
    slow = sorted(ms for _, ms, _ in refused)[int(0.95 * len(refused))]
    assert slow < 100, f"95% of refusals must take < 100 ms: {run.summary()}"
    if retry_after:
        assert all(header == "1" for _, _, header in refused), "every refusal says Retry-After"
