"""In-process: our handler vs the original pipeline, same checkpoint, same app frames.

The reference does what the original handler did: PIL decode, torchvision
ToTensor, forward with autograd on, batch of one, fp32, keep score > 0.5.
Ours is the exact TorchServe handler code (synthdet.inprocess), JPEG bytes in.

Each pipeline runs in its own process, so its peak RSS is its own; every
pipeline gets one untimed warm-up pass, then every frame is timed `--repeats`
times. Latency is the mean over frames of each frame's fastest repeat (the
least disturbed by other load on a shared machine), in wall and in CPU time.
Detections are compared box by box in the JSON the app receives.

    .venv/bin/python benchmarks/bench_inprocess.py [--checkpoint CKPT] [--images 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from common import app_frames, checkpoint_or_demo, compare, median, peak_rss_mb, percentile, timed

PIPELINES = {
    "reference": "original: PIL, ToTensor, autograd on, batch 1, fp32",
    "reference-nograd": "tests/support/reference.py: the same under torch.no_grad",
    "handler": "ours, default (fp32, channels_last backbone on CPU)",
    "handler-contiguous": "ours with channels_last off (bit-identical to the reference's math)",
    "handler-channels-last": "ours, fp32, channels_last backbone forced (a GPU's default leaves it off)",
    "handler-bf16": "ours, precision=bf16 (opt-in autocast)",
    "handler-fp16": "ours, precision=fp16 (opt-in autocast; GPU only, fp32 on a CPU)",
}
DEFAULT_PIPELINES = ("reference", "handler", "handler-contiguous", "handler-bf16")


def run_reference(
    checkpoint: Path, frames: list[bytes], autograd: bool, repeats: int, batch: int = 1
) -> dict[str, Any]:
    import io

    import torch
    from PIL import Image
    from torchvision.transforms import ToTensor

    from handler.detections import to_contract
    from handler.labels import DEFAULT_LABEL_MAP, load_label_names
    from tests.support.reference import load_reference_model

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  # as the handler picks
    model = load_reference_model(checkpoint).to(device)
    names = load_label_names(DEFAULT_LABEL_MAP)

    def predict(frame: bytes) -> list[dict[str, Any]]:
        # `batch` decodes and one forward pass of them all, as a batching server would.
        tensors = [ToTensor()(Image.open(io.BytesIO(frame)).convert("RGB")).to(device) for _ in range(batch)]
        with torch.set_grad_enabled(autograd):
            outputs = model(tensors)
        return [to_contract(output, names, 0.5) for output in outputs][0]  # .cpu(): waits for the GPU

    return measure(predict, frames, repeats, batch)


def run_handler(
    checkpoint: Path, frames: list[bytes], variant: str, repeats: int, batch: int
) -> dict[str, Any]:

    from serving.settings import ServingSettings
    from synthdet.inprocess import load_in_process

    precision = {"handler-bf16": "bf16", "handler-fp16": "fp16"}.get(variant, "fp32")
    channels_last = variant != "handler-contiguous"
    # measure() warms up itself
    serving = ServingSettings(precision=precision, channels_last=channels_last, warmup_sizes=())
    with load_in_process(checkpoint, serving=serving) as loaded:
        if variant == "handler-channels-last":  # the handler does this on CPU, and on GPU for fp16/bf16
            import torch

            loaded.handler.model.backbone.to(memory_format=torch.channels_last)

        def predict(frame: bytes) -> list[dict[str, Any]]:
            # `batch` copies of a frame share one pass, as TorchServe batches same-sized frames.
            return loaded.predict_batch([frame] * batch)[0]

        return measure(predict, frames, repeats, batch)


def measure(predict: Any, frames: list[bytes], repeats: int, batch: int = 1) -> dict[str, Any]:
    import torch

    predict(frames[0])  # warm-up, untimed, as the handler's own warm-up at load
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    detections: list[Any] = []
    wall = [[0.0] * repeats for _ in frames]
    cpu = [[0.0] * repeats for _ in frames]
    for repeat in range(repeats):
        for index, frame in enumerate(frames):
            found, wall[index][repeat], cpu[index][repeat] = timed(partial(predict, frame))
            if repeat == 0:
                detections.append(found)
    return {
        "wall_ms": wall,
        "cpu_ms": cpu,
        "detections": detections,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def worker(pipeline: str, checkpoint: Path, frames_dir: Path, repeats: int, batch: int) -> None:
    frames = [path.read_bytes() for path in sorted(frames_dir.glob("*.jpg"))]
    if pipeline.startswith("reference"):
        result = run_reference(checkpoint, frames, pipeline == "reference", repeats, batch)
    else:
        result = run_handler(checkpoint, frames, pipeline, repeats, batch)
    print(json.dumps(result))


def spawn(pipeline: str, checkpoint: Path, frames_dir: Path, repeats: int, batch: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", pipeline, "--checkpoint", str(checkpoint)]
    command += ["--frames-dir", str(frames_dir), "--repeats", str(repeats), "--batch", str(batch)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def best(per_frame: list[list[float]]) -> float:
    """Mean over frames of each frame's fastest repeat."""
    return sum(min(times) for times in per_frame) / len(per_frame)


def summarize(runs: dict[str, dict[str, Any]], baseline: str = "reference") -> dict[str, Any]:
    """Each pipeline against the reference's speed; detections against `baseline`'s."""
    reference = runs["reference"]
    summary: dict[str, Any] = {}
    for name, run in runs.items():
        versus = runs[baseline]["detections"]
        comparisons = [compare(got, want) for got, want in zip(run["detections"], versus, strict=True)]
        wall, cpu = best(run["wall_ms"]), best(run["cpu_ms"])
        passes = [value for row in run["wall_ms"] for value in row]
        summary[name] = {
            "description": PIPELINES[name],
            "best_wall_ms": round(wall, 1),
            "best_cpu_ms": round(cpu, 1),
            "median_wall_ms": round(median(passes), 1),
            "p50_ms": round(percentile(passes, 50), 1),
            "p90_ms": round(percentile(passes, 90), 1),
            "speedup_wall": round(best(reference["wall_ms"]) / wall, 3),
            "speedup_cpu": round(best(reference["cpu_ms"]) / cpu, 3),
            "batch": run["batch"],
            "device": run["device"],
            # Frames per second, one pass (of `batch` frames) at a time.
            "throughput_fps": round(1000 * run["batch"] / wall, 3),
            "throughput_ratio": round(run["batch"] * best(reference["wall_ms"]) / wall, 3),
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "peak_gpu_mb": round(run["peak_gpu_mb"], 1) if run.get("peak_gpu_mb") is not None else None,
            "compared_with": baseline,
            "threads": run["threads"],
            "identical_to_reference": all(item["identical"] for item in comparisons),
            "detections": sum(item["count"][0] for item in comparisons),
            "max_coord_diff_px": _worst(comparisons, "max_coord_diff_px"),
            "max_score_diff": _worst(comparisons, "max_score_diff"),
            "agreement": round(
                sum(item["matched"] for item in comparisons)
                / max(1, sum(max(item["count"]) for item in comparisons)),
                4,
            ),
        }
    return summary


def _worst(comparisons: list[dict[str, Any]], key: str) -> float | str:
    values = [item[key] for item in comparisons]
    return "count or labels differ" if None in values else max(values, default=0.0)


def print_table(summary: dict[str, Any], random_weights: bool) -> None:
    print(
        "latency: one pass (of --batch frames), mean over frames of each frame's best repeat; "
        "x: speedup over the reference; fps: frames per second"
    )
    print(
        f"{'pipeline':24} {'wall ms':>9} {'cpu ms':>9} {'x wall':>7} {'x cpu':>7} "
        f"{'fps':>6} {'x fps':>7} {'RSS MB':>8}  detections"
    )
    for name, row in summary.items():
        verdict = "identical" if row["identical_to_reference"] else f"agreement {row['agreement']:.1%}"
        print(
            f"{name:24} {row['best_wall_ms']:9.0f} {row['best_cpu_ms']:9.0f} "
            f"{row['speedup_wall']:7.2f} {row['speedup_cpu']:7.2f} {row['throughput_fps']:6.2f} "
            f"{row['throughput_ratio']:6.2f}x "
            f"{row['peak_rss_mb']:8.0f}  "
            f"{verdict} (max box diff {row['max_coord_diff_px']}, score diff {row['max_score_diff']})"
        )
    if random_weights:
        print(
            "note: untrained checkpoint (random weights): scores sit near the threshold, "
            "so agreement of reduced precision is a weak, pessimistic signal"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="default: an untrained demo checkpoint")
    parser.add_argument("--images", type=int, default=3, help="app frames (1280x960 and 1280x590)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the frames")
    parser.add_argument(
        "--batch", type=int, default=1, help="frames per pass for our handler (GPU throughput: 5)"
    )
    parser.add_argument("--pipelines", default=",".join(DEFAULT_PIPELINES), help=", ".join(PIPELINES))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--frames-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.checkpoint, args.frames_dir, args.repeats, args.batch)
        return
    pipelines = ["reference", *(p for p in args.pipelines.split(",") if p and p != "reference")]
    with tempfile.TemporaryDirectory(prefix="synthdet-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint, random_weights = checkpoint_or_demo(args.checkpoint, workdir)
        for index, frame in enumerate(app_frames(args.images)):
            (workdir / f"{index:03d}.jpg").write_bytes(frame)
        runs = {}
        for pipeline in pipelines:
            print(f"running {pipeline} ...", file=sys.stderr, flush=True)
            batch = 1 if pipeline.startswith("reference") else args.batch
            runs[pipeline] = spawn(pipeline, checkpoint, workdir, args.repeats, batch)
    summary = summarize(runs)
    if args.json:
        print(json.dumps({"random_weights": random_weights, "pipelines": summary}))
    else:
        print_table(summary, random_weights)


if __name__ == "__main__":
    main()
