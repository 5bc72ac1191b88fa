"""benchmarks/gpu.sh on this machine's CPU with a tiny image set: the GPU script cannot rot.

A GPU is lent to this project only now and then; the script must then run as it is.
Here it runs end to end (doctor, every in-process pipeline at a batch of 2,
`synthdet serve` loaded by `synthdet bench` with 2 phones) on 320x240 frames, and
the JSON it writes is checked for every figure the README's GPU rows are filled from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_on_a_cpu_and_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    # One batch size above 1 (the batched path) and one phone count keep it to a few minutes.
    args = ["--images", "2", "--size", "320x240", "--repeats", "2", "--batches", "2"]
    args += ["--phones", "2", "--bench-duration", "3", "--bench-timeout", "60", "--out", str(out)]
    done = subprocess.run(
        [str(REPO / "benchmarks" / "gpu.sh"), *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"]
    assert result["random_weights"] is True and "weak" in result["note"]
    assert result["doctor"]["verdict"].startswith("READY") and result["doctor"]["frame_ms"] > 0
    for batch in ("batch_2",):
        pipelines = result["inprocess"][batch]
        assert set(pipelines) == {"reference", "handler", "handler-channels-last", "handler-fp16"}
        for name, row in pipelines.items():
            assert row["p50_ms"] > 0 and row["p90_ms"] >= row["p50_ms"], name
            assert row["throughput_fps"] > 0 and row["throughput_ratio"] > 0, name
            assert row["compared_with"] == "handler" and 0 <= row["match_rate"] <= 1, name
        assert pipelines["handler"]["identical_to_reference"] is True  # fp32 against itself
        assert pipelines["handler"]["batch"] == int(batch.split("_")[1])
    e2e = result["end_to_end"]
    assert e2e["ready_s"] > 0
    for phones in ("phones_2",):
        assert e2e[phones]["sent"] > 0 and e2e[phones]["ok"] > 0, e2e[phones]
