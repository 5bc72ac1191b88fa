"""The CPU paths against the reference pipeline, on a checkpoint whose detections mean something.

The accuracy bound (synthdet.matching.ACCURACY_BOUND: >= 97% of the reference's
detections matched with the same label, IoU >= 0.9 and a score within 0.03; no
unmatched detection above threshold + 0.05) is checked on the fitted checkpoint
(tests/support/fitted_model.py), whose detections are confident and varied, on
app-sized frames. The default (exact fp32) path must meet it, and more: the same
detections up to float rounding. bf16 is opt-in because it does not meet it on
these checkpoints: its match rate is measured and printed, not asserted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.contract import make_test_jpeg, parse_like_app
from serving.settings import ServingSettings
from synthdet.inprocess import InProcessModel, load_in_process
from synthdet.matching import match_frames
from synthdet.reference import load_reference_model, reference_detections
from tests.support.matching import assert_same_detections, assert_within_bound

pytestmark = pytest.mark.integration

# App frames (1280x960, what a tablet sends); every frame costs the same compute after resizing.
FRAMES = [make_test_jpeg(1280, 960, seed=100 + index) for index in range(4)]
QUICK = ServingSettings(warmup_sizes=())


@pytest.fixture(scope="module")
def reference(fitted_checkpoint: Path) -> list[list[dict[str, Any]]]:
    model = load_reference_model(fitted_checkpoint)
    return [reference_detections(model, frame) for frame in FRAMES]


@pytest.fixture(scope="module")
def default_path(fitted_checkpoint: Path) -> Iterator[InProcessModel]:
    with load_in_process(fitted_checkpoint, serving=QUICK) as loaded:
        yield loaded


def test_the_fitted_checkpoint_is_confident_and_varied(reference: list[list[dict[str, Any]]]) -> None:
    """Otherwise the bound would be met by a model that finds nothing, or noise at the threshold."""
    found = [detection for frame in reference for detection in frame]
    assert len(found) >= 10 * len(FRAMES), len(found)
    assert all(len({d["label_id"] for d in frame}) >= 3 for frame in reference)
    scores = sorted(d["score"] for d in found)
    assert scores[len(scores) // 2] > 0.55 and scores[-1] > 0.9, scores


def test_the_default_cpu_path_is_exact_fp32_within_the_bound(
    default_path: InProcessModel, reference: list[list[dict[str, Any]]]
) -> None:
    handler = default_path.handler
    assert handler.precision == "fp32" and handler.cpu_plan is not None and not handler.cpu_plan.warning
    served = [default_path.predict(frame) for frame in FRAMES]
    report = match_frames(served, reference, threshold=0.5)
    print(f"default CPU path vs reference: {report.summary()}")
    assert_within_bound(report)
    assert report.match_rate == 1.0
    for got, want in zip(served, reference, strict=True):  # and only float rounding apart
        assert_same_detections(got, want)


def test_bf16_runs_and_its_match_rate_is_reported(
    fitted_checkpoint: Path, reference: list[list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="handler.service")
    serving = ServingSettings(precision="bf16", warmup_sizes=())
    with load_in_process(fitted_checkpoint, serving=serving) as bf16:
        plan = bf16.handler.cpu_plan
        assert plan is not None
        # The worker's startup says which path it chose, why, and what the CPU has.
        assert f"CPU path: {plan.reason}; CPU: " in caplog.text
        if plan.precision != "bf16":  # a CPU without native bf16 serves fp32 and says why
            assert plan.warning and "AMX or AVX512_BF16" in plan.reason
            pytest.skip(f"this CPU has no native bf16: {plan.reason}")
        answers = [bf16.handle([{"body": frame}])[0] for frame in FRAMES]
    # Valid answers, as the app parses them (labels, ids, boxes, scores), then matched.
    parsed = [parse_like_app(answer) for answer in answers]
    served = [
        [
            {
                "label_id": d.label_id,
                "box": [d.top_left.x, d.top_left.y, d.bottom_right.x, d.bottom_right.y],
                "score": d.score,
            }
            for d in frame
        ]
        for frame in parsed
    ]
    assert all(0 <= d["box"][0] <= d["box"][2] <= 1280 for frame in served for d in frame)
    report = match_frames(served, reference, threshold=0.5)
    print(f"bf16 (per stage) vs reference: {report.summary()}")
    # Measured, not bounded: bf16 is opt-in because it falls short of 97% on these checkpoints.
    # What is asserted: real detections that mostly agree (a broken path matches almost none).
    assert report.served > 0 and report.reference > 0
    assert report.match_rate >= 0.5, report.summary()
    assert report.min_iou >= 0.9 and report.max_score_diff <= 0.03
