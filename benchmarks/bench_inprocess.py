"""In-process, one run on one machine: the original pipeline against each of our paths.

The reference does what the original handler did: PIL decode, torchvision
ToTensor, forward with autograd on, batch of one, fp32, keep score > 0.5.
Ours is the exact TorchServe handler code (synthdet.inprocess), JPEG bytes in,
the app's JSON out, in each path it offers:

    reference              the original pipeline (synthdet/reference.py, autograd on)
    handler-channels-last  fp32 as the handler ran before the CPU paths: channels_last backbone only
    handler                ours, default: on CPU the exact fast fp32 path (BatchNorm folded,
                           channels_last, NCHW RoIAlign input); on GPU fp32
    handler-bf16           precision bf16: on CPU per stage (needs AMX or AVX512_BF16)

Each pipeline runs in its own process (its own peak RSS), after one untimed
warm-up pass; then every frame is timed `--repeats` times: p50/p90 per frame
over all passes, ratios to the reference and to the handler before the CPU
paths. Detections are matched against the reference's with the accuracy bound
(synthdet.matching: >= 97% matched with the same label, IoU >= 0.9, score within
0.03; no unmatched detection above threshold + 0.05). Without --checkpoint the
fitted test checkpoint is built first (~30 s; its detections are confident and
varied, so the match rate means something); pass YOUR model to learn what bf16
does to its detections.

The CPU (model, flags, physical cores) and how much CPU other processes used
while each pipeline was timed (`others_cores`, from /proc/stat) are recorded:
on a shared machine a row timed beside someone else's work is slower, and says so.

    .venv/bin/python benchmarks/bench_inprocess.py                     # ~3 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/bench_inprocess.py --checkpoint YOUR.pth --out result.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from common import REPO, app_frames, median, peak_rss_mb, percentile, timed

PIPELINES = {
    "reference": "original: PIL, ToTensor, autograd on, batch 1, fp32",
    "reference-nograd": "synthdet/reference.py: the same under torch.no_grad",
    "handler-channels-last": "ours before the CPU paths: fp32, channels_last backbone only",
    "handler": "ours, default (CPU: exact fp32, BatchNorm folded, channels_last, NCHW RoIAlign input)",
    "handler-contiguous": "ours, channels_last: false (the model as loaded: bit-identical to the reference)",
    "handler-bf16": "ours, precision bf16 (CPU: per stage, box maths fp32; GPU: autocast)",
    "handler-bf16-autocast": "bf16 autocast around the whole pass (what bf16 was on CPU before)",
    "handler-fp16": "ours, precision fp16 (GPU autocast; a CPU serves fp32)",
}
BEFORE = "handler-channels-last"
THRESHOLD = 0.5


# ------------------------------------------------------------------------------ one pipeline
def run_reference(
    checkpoint: Path, frames: list[bytes], autograd: bool, repeats: int, batch: int = 1
) -> dict[str, Any]:
    import io

    import torch
    from PIL import Image
    from torchvision.transforms import ToTensor

    from handler.detections import to_contract
    from handler.labels import DEFAULT_LABEL_MAP, load_label_names
    from synthdet.reference import load_reference_model

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  # as the handler picks
    model = load_reference_model(checkpoint).to(device)
    names = load_label_names(DEFAULT_LABEL_MAP)

    def predict(frame: bytes) -> list[dict[str, Any]]:
        # `batch` decodes and one forward pass of them all, as a batching server would.
        tensors = [ToTensor()(Image.open(io.BytesIO(frame)).convert("RGB")).to(device) for _ in range(batch)]
        with torch.set_grad_enabled(autograd):
            outputs = model(tensors)
        return [to_contract(output, names, THRESHOLD) for output in outputs][0]  # .cpu(): waits for the GPU

    return {**measure(predict, frames, repeats, batch), "precision_run": "fp32", "path": "reference"}


def run_handler(
    checkpoint: Path, frames: list[bytes], variant: str, repeats: int, batch: int
) -> dict[str, Any]:
    import torch

    from serving.settings import ServingSettings
    from synthdet.inprocess import load_in_process

    precision = {"handler-bf16": "bf16", "handler-fp16": "fp16"}.get(variant, "fp32")
    # The paths before the CPU paths start from the model as loaded (channels_last: false).
    plain = variant in ("handler-contiguous", BEFORE, "handler-bf16-autocast")
    serving = ServingSettings(precision=precision, channels_last=not plain, warmup_sizes=())
    with load_in_process(checkpoint, serving=serving) as loaded:
        handler = loaded.handler
        if variant in (BEFORE, "handler-bf16-autocast"):
            handler.model.backbone.to(memory_format=torch.channels_last)
        whole_pass: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
        if variant == "handler-bf16-autocast":
            whole_pass = partial(torch.autocast, handler.device.type, dtype=torch.bfloat16)

        def predict(frame: bytes) -> list[dict[str, Any]]:
            # `batch` copies of a frame share one pass, as TorchServe batches same-sized frames.
            with whole_pass():
                return loaded.predict_batch([frame] * batch)[0]

        plan = handler.cpu_plan
        path = plan.reason if plan is not None else str(handler.device)
        run_as = "bf16" if variant == "handler-bf16-autocast" else handler.precision
        return {**measure(predict, frames, repeats, batch), "precision_run": run_as, "path": path}


def measure(predict: Any, frames: list[bytes], repeats: int, batch: int = 1) -> dict[str, Any]:
    import torch

    _found, first_ms, _cpu = timed(partial(predict, frames[0]))  # warm-up, as the handler's own at load
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    detections: list[Any] = []
    wall = [[0.0] * repeats for _ in frames]
    cpu = [[0.0] * repeats for _ in frames]
    with others_busy() as others:
        for repeat in range(repeats):
            for index, frame in enumerate(frames):
                found, wall[index][repeat], cpu[index][repeat] = timed(partial(predict, frame))
                if repeat == 0:
                    detections.append(found)
    return {
        "wall_ms": wall,
        "cpu_ms": cpu,
        "first_pass_ms": first_ms,
        "others_cores": others["cores"],
        "detections": detections,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


@contextlib.contextmanager
def others_busy() -> Iterator[dict[str, float]]:
    """CPU cores other processes kept busy meanwhile (machine-wide busy time minus this
    process's, from /proc/stat; 0 where /proc is missing). Near 0: a quiet machine."""
    found = {"cores": 0.0}
    before, own, started = _busy_ticks(), _own_ticks(), time.perf_counter()
    yield found
    elapsed = time.perf_counter() - started
    if before is not None and own is not None and elapsed > 0:
        busy, mine = _busy_ticks() or before, _own_ticks() or own
        found["cores"] = round(max(0.0, (busy - before - (mine - own)) / _HZ / elapsed), 3)


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks() -> int | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _own_ticks() -> int | None:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime (threads included)


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
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{pipeline} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One pipeline's rounds: passes pooled per frame, detections and costs of the first round."""
    merged = dict(rounds[0])
    merged["wall_ms"] = [sum((r["wall_ms"][i] for r in rounds), []) for i in range(len(rounds[0]["wall_ms"]))]
    merged["cpu_ms"] = [sum((r["cpu_ms"][i] for r in rounds), []) for i in range(len(rounds[0]["cpu_ms"]))]
    merged["others_cores"] = [r["others_cores"] for r in rounds]
    merged["round_p50_ms"] = [round(percentile(_passes(r), 50), 1) for r in rounds]
    return merged


# ------------------------------------------------------------------------------ the comparison
def _passes(run: dict[str, Any]) -> list[float]:
    return [value for row in run["wall_ms"] for value in row]


def best(per_frame: list[list[float]]) -> float:
    """Mean over frames of each frame's fastest repeat."""
    return sum(min(times) for times in per_frame) / len(per_frame)


def summarize(runs: dict[str, dict[str, Any]], baseline: str = "reference") -> dict[str, Any]:
    """Each pipeline's speed against the reference's (and the handler before the CPU paths,
    when it ran), its detections against `baseline`'s with the accuracy bound."""
    from synthdet.matching import match_frames

    reference_p50 = percentile(_passes(runs["reference"]), 50)
    before_p50 = percentile(_passes(runs[BEFORE]), 50) if BEFORE in runs else None
    reference_best = best(runs["reference"]["wall_ms"])
    summary: dict[str, Any] = {}
    for name, run in runs.items():
        passes = _passes(run)
        p50 = percentile(passes, 50)
        wall, cpu = best(run["wall_ms"]), best(run["cpu_ms"])
        versus = runs[baseline]["detections"]
        match = match_frames(run["detections"], versus, threshold=THRESHOLD)
        summary[name] = {
            "description": PIPELINES[name],
            "precision_run": run.get("precision_run"),
            "path": run.get("path"),
            "p50_ms": round(p50, 1),
            "p90_ms": round(percentile(passes, 90), 1),
            "passes": len(passes),
            "vs_reference": round(reference_p50 / p50, 3),
            "vs_before": round(before_p50 / p50, 3) if before_p50 else None,
            "best_wall_ms": round(wall, 1),
            "best_cpu_ms": round(cpu, 1),
            "median_wall_ms": round(median(passes), 1),
            "cpu_per_wall": round(sum(sum(r) for r in run["cpu_ms"]) / sum(passes), 2),
            "first_pass_ms": round(run["first_pass_ms"], 1),
            "others_cores": run["others_cores"],
            "round_p50_ms": run.get("round_p50_ms"),
            "speedup_wall": round(reference_best / wall, 3),
            "speedup_cpu": round(best(runs["reference"]["cpu_ms"]) / cpu, 3),
            "batch": run["batch"],
            "device": run["device"],
            # Frames per second, one pass (of `batch` frames) at a time.
            "throughput_fps": round(1000 * run["batch"] / wall, 3),
            "throughput_ratio": round(run["batch"] * reference_best / wall, 3),
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "peak_gpu_mb": round(run["peak_gpu_mb"], 1) if run.get("peak_gpu_mb") is not None else None,
            "threads": run["threads"],
            "compared_with": baseline,
            "identical_to_reference": run["detections"] == versus,
            **match.to_json(),
        }
    return summary


def machine() -> dict[str, Any]:
    """What ran it: the CPU (model, deciding flags, cores), torch, the load when it ended."""
    import torch

    from handler.cpu_features import detect

    cpu = detect()
    return {
        "cpu": cpu.model,
        "cpu_flags": list(cpu.reported),
        "physical_cores": cpu.physical_cores,
        "logical_cpus": cpu.logical_cpus,
        "native_bf16": cpu.native_bf16,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def default_pipelines() -> list[str]:
    """reference, before, default, and bf16 where the CPU (or a GPU) runs it natively."""
    import torch

    from handler.cpu_features import detect

    chosen = ["reference", BEFORE, "handler"]
    if torch.cuda.is_available() or detect().native_bf16 is not False:
        chosen.append("handler-bf16")
    return chosen


def print_table(summary: dict[str, Any], meta: dict[str, Any]) -> None:
    found = meta["machine"]
    print(
        f"{found['cpu']} ({found['physical_cores']} physical cores, {' '.join(found['cpu_flags'])}); "
        f"torch {found['torch']}; {meta['frames']} frames {meta['frame_size']} x {meta['repeats']} "
        f"repeats x {meta['rounds']} rounds; checkpoint: {meta['checkpoint']}"
    )
    print(
        f"{'pipeline':22} {'p50 ms':>7} {'p90 ms':>7} {'x ref':>6} {'x before':>8} {'RSS MB':>7} "
        f"{'others':>6}  match vs reference (bound: >= 97%, none unmatched above "
        f"{THRESHOLD + 0.05:.2f})"
    )
    for name, row in summary.items():
        before = f"{row['vs_before']:8.2f}" if row["vs_before"] else f"{'-':>8}"
        others = max(row["others_cores"]) if isinstance(row["others_cores"], list) else row["others_cores"]
        ran = f" [ran {row['precision_run']}]" if name.endswith(("bf16", "fp16")) else ""
        verdict = "within" if row["within_bound"] else "OUTSIDE"
        print(
            f"{name:22} {row['p50_ms']:7.0f} {row['p90_ms']:7.0f} {row['vs_reference']:6.2f} {before} "
            f"{row['peak_rss_mb']:7.0f} {others:6.2f}  {row['match_rate']:.1%} "
            f"({row['matched']}/{row['reference_detections']}, extra {row['extra_over_margin']}, "
            f"missed {row['missed_over_margin']}, max score diff {row['max_score_diff']:.4f}, "
            f"min IoU {row['min_iou']:.3f}): {verdict}{ran}"
        )
    print(
        "others: CPU cores other processes used meanwhile (max over rounds); above ~0.1 the row "
        "was slowed by them. x before: against the handler before the CPU paths."
    )


def build_checkpoint(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The checkpoint to measure and how to name it in the results."""
    if args.checkpoint is not None:
        return args.checkpoint, str(args.checkpoint)
    if args.untrained:
        from synthdet.demo_model import write_demo_checkpoint

        return write_demo_checkpoint(workdir / "untrained.pth"), "untrained (random weights)"
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.fitted_model import make_fitted_checkpoint

    print("building the fitted test checkpoint (~30 s) ...", file=sys.stderr, flush=True)
    return make_fitted_checkpoint(workdir / "fitted.pth"), "fitted test checkpoint (tests/support)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="YOUR model (default: the fitted test checkpoint)")
    parser.add_argument("--untrained", action="store_true", help="an untrained checkpoint instead")
    parser.add_argument("--images", type=int, default=10, help="app frames (seeds 100...)")
    parser.add_argument("--size", default="1280x960", help="frame size WxH (the app sends 1280 wide)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the frames")
    parser.add_argument("--rounds", type=int, default=1, help="run the whole list this many times, ABAB")
    parser.add_argument(
        "--batch", type=int, default=1, help="frames per pass for our handler (GPU throughput: 5)"
    )
    parser.add_argument("--pipelines", help=f"comma-separated, of: {', '.join(PIPELINES)}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--frames-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.checkpoint, args.frames_dir, args.repeats, args.batch)
        return
    chosen = args.pipelines.split(",") if args.pipelines else default_pipelines()
    pipelines = ["reference", *(p for p in chosen if p and p != "reference")]
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        parser.error(f"unknown pipelines {unknown}: choose from {', '.join(PIPELINES)}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="synthdet-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint, named = build_checkpoint(args, workdir)
        for index, frame in enumerate(app_frames(args.images, (height,), width)):
            (workdir / f"{index:03d}.jpg").write_bytes(frame)
        rounds: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):  # ABAB: a slow drift of the machine's load hits every path
            for pipeline in pipelines:
                print(f"round {round_ + 1}: {pipeline} ...", file=sys.stderr, flush=True)
                batch = 1 if pipeline.startswith("reference") else args.batch
                rounds.setdefault(pipeline, []).append(
                    spawn(pipeline, checkpoint, workdir, args.repeats, batch)
                )
    summary = summarize({name: merge(results) for name, results in rounds.items()})
    meta = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "checkpoint": named,
        "frames": args.images,
        "frame_size": f"{width}x{height}",
        "repeats": args.repeats,
        "rounds": args.rounds,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else None,
    }
    result = {"meta": meta, "pipelines": summary}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print_table(summary, meta)


if __name__ == "__main__":
    main()
