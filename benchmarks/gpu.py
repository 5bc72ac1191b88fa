"""GPU numbers in one command: in-process pipelines, end to end through `synthdet serve`, doctor.

Writes one JSON file (default benchmarks/results/gpu-<card>-<date>.json):

- machine: the GPU's name, driver, compute capability, torch and CUDA versions;
- doctor: `synthdet doctor` as it reads this machine (its checks and verdict);
- inprocess: for batch 1 and 5, the reference pipeline (what the original
  handler did: PIL, ToTensor, autograd on, fp32) and ours in fp32, fp32 with a
  channels_last backbone, and fp16 autocast, same checkpoint and app frames:
  latency p50/p90 per pass, throughput (frames/s) and its ratio to the
  reference's at the same batch, peak GPU memory, and detections matched box
  by box against our fp32 (random weights make fp16 agreement a weak signal:
  scores sit near the threshold);
- end_to_end: `synthdet bench` at 1 and 5 phones against `synthdet serve` on
  this machine.

On a GPU the defaults finish in a few minutes (well within 8); without one it
runs on the CPU (the test suite runs it that way with a tiny image set, so that
it keeps working). Run with benchmarks/gpu.sh, which finds a Python with torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_inprocess
from common import REPO, checkpoint_or_demo

from serving.contract import make_test_jpeg

PIPELINES = ("reference", "handler", "handler-channels-last", "handler-fp16")
BASELINE = "handler"  # fp16 and channels_last are compared with our own fp32
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cpu_count": __import__("os").cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_mb": props.total_memory // 2**20,
            "driver": _nvidia_smi("driver_version"),
        }
    return info


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def doctor() -> dict[str, Any]:
    from synthdet.doctor import diagnose

    report = diagnose(measure=True)
    return {
        "verdict": report.verdict,
        "ready": report.ready,
        "frame_ms": round(report.frame_s * 1000, 1) if report.frame_s is not None else None,
        "checks": [{"name": c.name, "value": c.value, "ok": c.ok} for c in report.checks],
    }


def write_frames(folder: Path, count: int, size: tuple[int, int]) -> None:
    width, height = size
    heights = (height, round(height * 590 / 960)) if (width, height) == (1280, 960) else (height,)
    for index in range(count):
        frame = make_test_jpeg(width, heights[index % len(heights)], seed=100 + index)
        (folder / f"{index:03d}.jpg").write_bytes(frame)


def inprocess(checkpoint: Path, frames: Path, batches: list[int], repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for batch in batches:
        runs = {}
        for pipeline in PIPELINES:
            print(f"in-process: {pipeline}, batch {batch} ...", file=sys.stderr, flush=True)
            runs[pipeline] = bench_inprocess.spawn(pipeline, checkpoint, frames, repeats, batch)
        results[f"batch_{batch}"] = bench_inprocess.summarize(runs, baseline=BASELINE)
    return results


def end_to_end(checkpoint: Path, phones: list[int], duration_s: float, timeout_s: float) -> dict[str, Any]:
    """`synthdet serve` (TorchServe with our handler, behind its front) loaded by `synthdet bench`."""
    from serving.models import ModelSpec
    from synthdet.bench import BenchConfig, run_bench
    from synthdet.local_serve import LocalServeConfig, free_port, serving

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="synthdet-gpu-serve-") as work:
        config = LocalServeConfig(
            models=[ModelSpec("synthdet", checkpoint)], workdir=Path(work), port=free_port()
        )
        started = time.monotonic()
        print("end to end: starting synthdet serve ...", file=sys.stderr, flush=True)
        with serving(config, timeout_s=600) as server:
            results["ready_s"] = round(time.monotonic() - started, 1)
            url = server.prediction_url("synthdet")
            for count in phones:
                print(f"end to end: synthdet bench --phones {count} ...", file=sys.stderr, flush=True)
                run = run_bench(
                    BenchConfig(url=url, phones=count, duration_s=duration_s, timeout_s=timeout_s)
                )
                results[f"phones_{count}"] = run.to_json()
    return results


def out_path(card: str | None) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", (card or "cpu").lower()).strip("-")
    return RESULTS / f"gpu-{slug}-{datetime.date.today().isoformat()}.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="default: an untrained demo checkpoint")
    parser.add_argument("--images", type=int, default=4, help="app frames (1280x960 and 1280x590)")
    parser.add_argument("--size", default="1280x960", help="frame size WxH (tiny for a CPU check)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the frames")
    parser.add_argument("--batches", default="1,5")
    parser.add_argument("--phones", default="1,5")
    parser.add_argument("--bench-duration", type=float, default=20.0, help="seconds per `synthdet bench` run")
    parser.add_argument("--bench-timeout", type=float, default=2.0, help="per request (the app's 2 s)")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--out", type=Path, help="the JSON file (default benchmarks/results/...)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    started = time.monotonic()
    result: dict[str, Any] = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    result["machine"] = machine()
    print(f"machine: {result['machine']}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="synthdet-gpu-") as tmp:
        work = Path(tmp)
        checkpoint, random_weights = checkpoint_or_demo(args.checkpoint, work)
        result["random_weights"] = random_weights
        result["doctor"] = doctor()
        frames = work / "frames"
        frames.mkdir()
        write_frames(frames, args.images, (width, height))
        result["settings"] = {
            "images": args.images,
            "size": [width, height],
            "repeats": args.repeats,
            "pipelines": list(PIPELINES),
            "detections_compared_with": BASELINE,
        }
        batches = [int(b) for b in args.batches.split(",") if b]
        result["inprocess"] = inprocess(checkpoint, frames, batches, args.repeats)
        if not args.skip_end_to_end:
            phones = [int(p) for p in args.phones.split(",") if p]
            result["end_to_end"] = end_to_end(checkpoint, phones, args.bench_duration, args.bench_timeout)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if random_weights:
        result["note"] = (
            "untrained checkpoint (random weights): speed and memory are the real model's, but "
            "scores sit near the threshold, so fp16 agreement is a weak, pessimistic signal"
        )
    path = args.out or out_path(result["machine"].get("gpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main()
