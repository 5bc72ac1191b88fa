"""End to end: an app request through the full local serving path vs the bare forward pass.

Starts TorchServe exactly as `synthdet serve` does (synthdet.local_serve, default
ServingSettings), and measures:

- cold start: service start -> every model READY -> first good answer (a
  contract-valid JSON array for an app frame);
- serving overhead: for the same frame, the latency of one request at a time
  (HTTP, TorchServe, decode, forward, JSON) against the bare forward pass in this
  process (inference mode, image already decoded to a tensor, same model and
  threshold). The two are interleaved so a busy machine slows both alike, and
  they never run at the same time.

    .venv/bin/python benchmarks/bench_end_to_end.py [--checkpoint CKPT] [--rounds 4] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import app_frames, checkpoint_or_demo, median, timed

from serving.contract import parse_like_app, post_image
from serving.models import ModelSpec
from serving.polling import retry
from serving.settings import ServingSettings
from synthdet.local_serve import LocalServeConfig, free_port, start_local_server

# A ready server answers its first frame within this (warm-up included).
FIRST_ANSWER_TIMEOUT_S = 300


def cold_start(config: LocalServeConfig, frame: bytes) -> tuple[Any, dict[str, float]]:
    """Start the service; seconds to READY and to the first good answer."""
    started = time.perf_counter()
    server = start_local_server(config)
    try:
        launched = time.perf_counter() - started  # archive built, TorchServe process started
        server.wait_ready(600)
        ready = time.perf_counter() - started
        url = server.prediction_url(config.models[0].name)

        # Ready workers may still refuse the first frames (warm-up): retry for a while.
        def first_answer() -> None:
            response = post_image(url, frame, timeout_s=120)
            response.raise_for_status()
            parse_like_app(response.content)

        retry(first_answer, timeout_s=FIRST_ANSWER_TIMEOUT_S, every_s=0.2)
    except BaseException:
        server.stop()
        raise
    first = time.perf_counter() - started
    phases = {"archive_and_launch_s": launched, "ready_s": ready, "first_answer_s": first}
    return server, {name: round(value, 2) for name, value in phases.items()}


def bare_forward(checkpoint: Path, threshold: float) -> Any:
    """The model alone: inference mode, image already a tensor."""
    import torch

    from handler.checkpoint import load_model
    from handler.labels import DEFAULT_LABEL_MAP, load_label_names
    from handler.service import _keep_freed_memory

    # The worker keeps freed activations in its heap (no page faults per pass): so does
    # the bare forward, so the ratio measures serving overhead and nothing else.
    _keep_freed_memory()
    model = load_model(checkpoint, len(load_label_names(DEFAULT_LABEL_MAP)), threshold)
    if not torch.cuda.is_available():  # the worker's default CPU path, so only serving differs
        from handler.cpu_paths import prepare_for_cpu

        prepare_for_cpu(model, "fp32")

    def forward(tensor: torch.Tensor) -> Any:
        with torch.inference_mode():
            return model([tensor])

    return forward


def decoded(frame: bytes) -> Any:
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    return to_tensor(Image.open(io.BytesIO(frame)).convert("RGB"))


def overhead(url: str, forward: Any, frame: bytes, rounds: int) -> dict[str, Any]:
    tensor = decoded(frame)
    forward(tensor)  # this process's first forward builds its kernels: not timed
    served, bare = [], []
    for _ in range(rounds):
        response, served_ms, _cpu = timed(lambda: post_image(url, frame, timeout_s=120))
        response.raise_for_status()
        served.append(served_ms)
        bare.append(timed(lambda: forward(tensor))[1])
    return {
        "served_ms": [round(value, 1) for value in served],
        "bare_forward_ms": [round(value, 1) for value in bare],
        "median_served_ms": round(median(served), 1),
        "median_bare_ms": round(median(bare), 1),
        "overhead_ratio": round(median(served) / median(bare), 4),
        "overhead_ratio_paired": round(median([s / b for s, b in zip(served, bare, strict=True)]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="default: an untrained demo checkpoint")
    parser.add_argument("--rounds", type=int, default=4, help="served/bare pairs per frame size")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    serving = ServingSettings()
    with tempfile.TemporaryDirectory(prefix="synthdet-e2e-") as tmp:
        checkpoint, random_weights = checkpoint_or_demo(args.checkpoint, Path(tmp))
        config = LocalServeConfig(
            models=[ModelSpec("synthdet", checkpoint)], workdir=Path(tmp) / "serve", port=free_port()
        )
        frames = app_frames(2)  # 1280x960 and 1280x590
        print("starting TorchServe ...", file=sys.stderr, flush=True)
        server, start = cold_start(config, frames[0])
        try:
            url = server.prediction_url("synthdet")
            forward = bare_forward(checkpoint, serving.score_threshold)
            sizes = {}
            for frame, name in zip(frames, ("1280x960", "1280x590"), strict=True):
                print(f"timing {name} ...", file=sys.stderr, flush=True)
                sizes[name] = overhead(url, forward, frame, args.rounds)
            worker_log = _worker_threads(server.log_path.parent)
        finally:
            server.stop()
    result = {"random_weights": random_weights, "cold_start": start, "sizes": sizes, "worker": worker_log}
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"cold start: archive built and TorchServe launched after {start['archive_and_launch_s']} s, "
        f"READY after {start['ready_s']} s, first good answer after {start['first_answer_s']} s"
    )
    for name, row in sizes.items():
        print(
            f"{name}: served {row['median_served_ms']:.0f} ms vs bare forward {row['median_bare_ms']:.0f} ms"
            f" -> overhead x{row['overhead_ratio']:.3f} (paired x{row['overhead_ratio_paired']:.3f})"
        )
    print(f"worker: {worker_log}")


def _worker_threads(logs: Path) -> str:
    """The handler logs its device, precision and torch thread count at load."""
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if "SynthDet model" in line and "loaded on" in line:
                return line.split("SynthDet model", 1)[1].strip()
    return "(load line not found)"


if __name__ == "__main__":
    main()
