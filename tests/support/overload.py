"""Overload runs with `synthdet bench`: ~3x what the server can do, for 60 s.

The bench (synthdet/bench.py) plays phones; here it is wrapped to also record
every answer's status, send and finish times and Retry-After, so a test can
tell "served in time" from "refused fast" from "answered late".

"Late" is judged by the server's queue discipline, not by a wall-clock
deadline: with W workers computing one frame each and room for Q more in the
queue, a served frame can never see more than W + Q - 1 other frames finish
while it waits. That holds however slow a busy shared machine makes every
frame, and a server that queues without bound (answering frames long after the
app gave up) breaks it at once. Speed claims are relative to the service time
measured in the same run; absolute speed belongs in benchmarks.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from serving.contract import make_test_jpeg, post_image
from synthdet import bench

DURATION_S = 60.0
OVERLOAD_FACTOR = 3.0
# No answer may be abandoned by the bench: what is judged is the order frames finish in.
NO_DEADLINE_S = 600.0
# Finish times are seen by the client: a frame that finished just as the next one was
# admitted can look, by a few milliseconds, as if it finished while that one waited.
# Real queueing costs a whole frame's computation (seconds on a CPU).
CLIENT_SLACK_S = 0.05


@dataclass(frozen=True)
class Answer:
    status: int
    sent: float
    finished: float
    retry_after: str | None

    @property
    def ms(self) -> float:
        return (self.finished - self.sent) * 1000


@dataclass
class Answers:
    rows: list[Answer] = field(default_factory=list)

    def statuses(self) -> Counter[int]:
        return Counter(answer.status for answer in self.rows)

    def served(self) -> list[Answer]:
        return [answer for answer in self.rows if answer.status == 200]

    def refused(self) -> list[Answer]:
        return [answer for answer in self.rows if answer.status != 200]

    def overtaken(self, answer: Answer) -> int:
        """Other served frames that finished while this one was in the server."""
        start = answer.sent + CLIENT_SLACK_S
        return sum(
            1 for other in self.served() if other is not answer and start < other.finished < answer.finished
        )


@dataclass
class OverloadRun:
    service_s: float
    offered_rps: float
    result: bench.BenchResult
    answers: Answers

    def summary(self) -> str:
        served, refused = self.answers.served(), self.answers.refused()
        served_max = max((a.ms for a in served), default=0.0)
        refused_ms = [a.ms for a in refused]
        refused_p50 = statistics.median(refused_ms) if refused_ms else 0.0
        refused_max = max(refused_ms, default=0.0)
        most_overtaken = max((self.answers.overtaken(a) for a in served), default=0)
        refusals = dict(self.answers.statuses() - Counter({200: len(served)}))
        return (
            f"capacity ~{1 / self.service_s:.2f} rps ({self.service_s:.2f} s per frame when idle), "
            f"offered {self.offered_rps:.2f} rps for {DURATION_S:.0f} s: sent {self.result.sent}, "
            f"served {self.result.ok} (p50 {self.result.p50_ms or 0:.0f} ms, max {served_max:.0f} ms, "
            f"{self.result.throughput_rps:.2f} rps; at most {most_overtaken} others finished while one "
            f"waited), refused {refusals} (p50 {refused_p50:.0f} ms, max {refused_max:.0f} ms), "
            f"timeouts {self.result.timeouts}, errors {self.result.errors}"
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


def run_overload(url: str, monkeypatch: pytest.MonkeyPatch) -> OverloadRun:
    service_s = measure_service_time(url)
    answers = Answers()
    judge = bench.Phone._judge

    def recording_judge(self: bench.Phone, response: httpx.Response, latency_ms: float) -> None:
        now = time.monotonic()
        answers.rows.append(
            Answer(response.status_code, now - latency_ms / 1000, now, response.headers.get("retry-after"))
        )
        judge(self, response, latency_ms)

    monkeypatch.setattr(bench.Phone, "_judge", recording_judge)
    offered = OVERLOAD_FACTOR / service_s
    config = bench.BenchConfig(
        url, phones=1, duration_s=DURATION_S, timeout_s=NO_DEADLINE_S, fps=offered, heights=(960,)
    )
    result = bench.run_bench(config)
    return OverloadRun(service_s, offered, result, answers)


def assert_refused_fast_and_nothing_late(run: OverloadRun, *, admitted: int, retry_after: bool) -> None:
    """`admitted`: how many frames the server takes at once (computing plus queued)."""
    statuses = run.answers.statuses()
    served, refused = run.answers.served(), run.answers.refused()
    assert run.result.timeouts == 0 and run.result.errors == 0, run.summary()
    assert set(statuses) <= {200, 429, 503}, statuses
    assert len(refused) == run.result.refused
    assert refused, f"nothing was refused at 3x capacity: {run.summary()}"
    # Never late: no served frame waited behind more than the server admits.
    worst = max((run.answers.overtaken(answer) for answer in served), default=0)
    assert worst <= admitted - 1, f"a frame waited behind {worst} others: {run.summary()}"
    # Not starved either: the workers stayed busy at the speed this run saw.
    fastest = min(answer.ms for answer in served) / 1000
    assert run.result.ok >= 0.25 * DURATION_S / (admitted * fastest), run.summary()
    # Refused fast: a refusal costs a small fraction of computing a frame.
    slow = sorted(answer.ms for answer in refused)[int(0.95 * len(refused))] / 1000
    assert slow < 0.1 * fastest, f"95% of refusals must take under a tenth of a frame: {run.summary()}"
    if retry_after:
        assert all(answer.retry_after == "1" for answer in refused), "every refusal says Retry-After"
