"""`synthdet bench` as a user runs it, against a real TorchServe on this machine (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synthdet.local_serve import LocalServer

pytestmark = pytest.mark.integration


def test_bench_reports_sane_numbers_against_torchserve(torchserve: LocalServer) -> None:
    # One phone for 0.4 s: two app frames (1280x960, then 1280x590) 200 ms apart, the
    # second in flight while the first is served. A CPU forward takes seconds (tens
    # on a busy machine), so the app's 2 s timeout is lifted here (--timeout).
    command = [sys.executable, "-m", "synthdet.cli", "bench", torchserve.prediction_url("synthdet")]
    command += ["--phones", "1", "--duration", "0.4", "--timeout", "100", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == 0, report["error_samples"]
    assert report["timeouts"] == 0
    assert report["sent"] == report["ok"] == 2 and report["dropped_frames"] == 0
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"] < 100_000
    assert 0 < report["throughput_rps"] <= 5
