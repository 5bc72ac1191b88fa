"""Shared by the benchmarks: app frames, a checkpoint, timing.

Detections are compared with synthdet.matching (the one matcher, shared with the tests).
"""

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


def app_frames(count: int, heights: Sequence[int] = (960, 590), width: int = 1280) -> list[bytes]:
    """Quality-75 JPEGs as the app sends them (1280 px wide), cycling through `heights`
    (tablet and phone shapes), seeds 100, 101, ..."""
    return [make_test_jpeg(width, heights[index % len(heights)], seed=100 + index) for index in range(count)]


def checkpoint_or_demo(path: Path | None, workdir: Path) -> tuple[Path, bool]:
    """The checkpoint to measure, or an untrained one (random weights) when none is given."""
    if path is not None:
        return path, False
    return write_demo_checkpoint(workdir / "demo-untrained.pth"), True


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which a new program starts afresh (getrusage's
    maxrss survives exec, so a child would report its parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


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
