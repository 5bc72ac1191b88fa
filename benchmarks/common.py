"""Shared by the benchmarks: app frames, a checkpoint, timing and detection comparison."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

from serving.contract import make_test_jpeg  # noqa: E402
from synthdet.demo_model import write_demo_checkpoint  # noqa: E402

Detections = list[dict[str, Any]]


def app_frames(count: int, heights: Sequence[int] = (960, 590)) -> list[bytes]:
    """1280 px wide quality-75 JPEGs as the app sends them, alternating tablet and phone shapes."""
    return [make_test_jpeg(1280, heights[index % len(heights)], seed=100 + index) for index in range(count)]


def checkpoint_or_demo(path: Path | None, workdir: Path) -> tuple[Path, bool]:
    """The checkpoint to measure, or an untrained one (random weights) when none is given."""
    if path is not None:
        return path, False
    return write_demo_checkpoint(workdir / "demo-untrained.pth"), True


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall ms, CPU ms of this process): CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), as `synthdet bench` computes it."""
    from synthdet.bench import percentile as bench_percentile

    found = bench_percentile(values, q)
    return float("nan") if found is None else found


def compare(got: Detections, want: Detections) -> dict[str, Any]:
    """Box by box, in the JSON the app receives (coordinates to 0.01 px, scores to 1e-5).

    `identical` means the answers are the same bytes. `matched` pairs detections
    greedily by label and IoU >= 0.5, for modes that are not exact (bf16, fp16).
    """
    same_shape = len(got) == len(want) and all(
        a["label_id"] == b["label_id"] for a, b in zip(got, want, strict=False)
    )
    coord_diff = score_diff = 0.0
    if same_shape:
        for a, b in zip(got, want, strict=True):
            coord_diff = max(coord_diff, *(abs(x - y) for x, y in zip(_coords(a), _coords(b), strict=True)))
            score_diff = max(score_diff, abs(a["score"] - b["score"]))
    matched = _match(got, want)
    return {
        "identical": got == want,
        "count": [len(got), len(want)],
        "same_labels_in_order": same_shape,
        "max_coord_diff_px": coord_diff if same_shape else None,
        "max_score_diff": score_diff if same_shape else None,
        "matched": matched,
        "agreement": matched / max(len(got), len(want)) if (got or want) else 1.0,
    }


def _coords(detection: dict[str, Any]) -> list[float]:
    box = detection["box"]
    return [box["top_left"]["x"], box["top_left"]["y"], box["bottom_right"]["x"], box["bottom_right"]["y"]]


def _iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(got: Detections, want: Detections) -> int:
    free = list(want)
    matched = 0
    for detection in got:
        best = max(
            (c for c in free if c["label_id"] == detection["label_id"]),
            key=lambda c: _iou(_coords(c), _coords(detection)),
            default=None,
        )
        if best is not None and _iou(_coords(best), _coords(detection)) >= 0.5:
            free.remove(best)
            matched += 1
    return matched
