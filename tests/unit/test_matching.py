"""The one matcher (synthdet.matching) on constructed detections: the bound can fail."""

from __future__ import annotations

from typing import Any

import pytest

from synthdet.matching import ACCURACY_BOUND, iou, match_frame, match_frames, plain
from tests.support.matching import assert_same_detections, assert_within_bound


def det(label: int, box: tuple[float, float, float, float], score: float) -> dict[str, Any]:
    return {"label_id": label, "box": list(box), "score": score}


def app(label: int, box: tuple[float, float, float, float], score: float) -> dict[str, Any]:
    """The same detection as the app receives it."""
    x0, y0, x1, y1 = box
    return {
        "label": f"class_{label}",
        "label_id": label,
        "box": {"top_left": {"x": x0, "y": y0}, "bottom_right": {"x": x1, "y": y1}},
        "score": score,
    }


BOX = (100.0, 100.0, 200.0, 200.0)


def test_the_bound_is_the_issues() -> None:
    assert (ACCURACY_BOUND.iou_min, ACCURACY_BOUND.score_tolerance) == (0.9, 0.03)
    assert (ACCURACY_BOUND.matched_min, ACCURACY_BOUND.margin) == (0.97, 0.05)


def test_iou() -> None:
    assert iou(BOX, BOX) == 1.0
    assert iou(BOX, (150.0, 100.0, 250.0, 200.0)) == pytest.approx(1 / 3)
    assert iou(BOX, (300.0, 300.0, 400.0, 400.0)) == 0.0
    assert iou((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)) == 0.0


def test_app_json_and_plain_detections_are_the_same() -> None:
    assert plain(app(3, BOX, 0.8)) == det(3, BOX, 0.8)
    assert match_frame([app(3, BOX, 0.8)], [det(3, BOX, 0.8)]).pairs


@pytest.mark.parametrize(
    ("served", "same"),
    [
        (det(3, BOX, 0.8), True),
        (det(4, BOX, 0.8), False),  # another label
        (det(3, BOX, 0.829), True),  # score within 0.03
        (det(3, BOX, 0.84), False),
        (det(3, (105.0, 100.0, 205.0, 200.0), 0.8), True),  # IoU 0.905
        (det(3, (110.0, 100.0, 210.0, 200.0), 0.8), False),  # IoU 0.818
    ],
    ids=["twin", "label", "score-within", "score-off", "iou-above", "iou-below"],
)
def test_what_counts_as_the_same_detection(served: dict[str, Any], same: bool) -> None:
    frame = match_frame([served], [det(3, BOX, 0.8)])
    assert bool(frame.pairs) is same
    assert bool(frame.unmatched_served) is bool(frame.unmatched_reference) is not same


def test_each_served_detection_pairs_once_best_iou_first() -> None:
    reference = [det(1, BOX, 0.9), det(1, (102.0, 100.0, 202.0, 200.0), 0.89)]
    served = [det(1, (101.0, 100.0, 201.0, 200.0), 0.9)]
    frame = match_frame(served, reference)
    assert len(frame.pairs) == 1 and frame.pairs[0][1] == reference[0]  # the higher score chooses first
    assert frame.unmatched_reference == [reference[1]] and not frame.unmatched_served


def frames_with(matched: int, missed: list[float], extra: list[float]) -> tuple[list[Any], list[Any]]:
    """One frame per detection; `matched` twins, reference-only and served-only scores."""
    reference: list[list[Any]] = []
    served: list[list[Any]] = []
    for index in range(matched):
        box = (10.0 * index, 0.0, 10.0 * index + 50, 50.0)
        reference.append([det(1, box, 0.9)])
        served.append([det(1, box, 0.91)])
    for score in missed:
        reference.append([det(2, BOX, score)])
        served.append([])
    for score in extra:
        reference.append([])
        served.append([det(2, BOX, score)])
    return served, reference


def test_97_percent_matched_is_within_the_bound_and_96_is_not() -> None:
    served, reference = frames_with(97, missed=[0.52, 0.53, 0.54], extra=[])
    report = match_frames(served, reference, threshold=0.5)
    assert report.match_rate == pytest.approx(0.97) and report.within_bound
    assert_within_bound(report)
    served, reference = frames_with(96, missed=[0.52, 0.53, 0.54, 0.51], extra=[])
    report = match_frames(served, reference, threshold=0.5)
    assert report.match_rate == pytest.approx(0.96) and not report.within_bound
    with pytest.raises(AssertionError, match="OUTSIDE the bound"):
        assert_within_bound(report)


@pytest.mark.parametrize(
    ("missed", "extra", "inside"),
    [([], [0.55], True), ([], [0.56], False), ([0.56], [], False), ([0.55], [0.54], True)],
    ids=["extra-at-edge", "extra-over", "miss-over", "both-at-edge"],
)
def test_no_unmatched_detection_above_threshold_plus_margin(
    missed: list[float], extra: list[float], inside: bool
) -> None:
    served, reference = frames_with(100, missed=missed, extra=extra)
    report = match_frames(served, reference, threshold=0.5)
    assert report.match_rate >= 0.97
    assert report.within_bound is inside, report.summary()


def test_the_report_carries_the_worst_differences() -> None:
    served = [[det(1, (100.5, 100.0, 200.0, 200.0), 0.82)]]
    report = match_frames(served, [[det(1, BOX, 0.8)]])
    assert report.max_corner_diff_px == pytest.approx(0.5)
    assert report.max_score_diff == pytest.approx(0.02)
    assert report.min_iou == pytest.approx(99.5 / 100)
    assert report.to_json()["matched"] == 1


def test_frames_must_line_up() -> None:
    with pytest.raises(ValueError, match="2 served frames vs 1"):
        match_frames([[], []], [[]])


def test_no_reference_detections_is_not_a_pass_in_tests() -> None:
    with pytest.raises(AssertionError, match="no reference detections"):
        assert_within_bound(match_frames([[]], [[]]))


def test_the_exact_check_catches_a_moved_corner_an_extra_and_a_score() -> None:
    reference = [det(1, BOX, 0.8), det(2, (300.0, 300.0, 400.0, 380.0), 0.7)]
    same = [app(2, (300.0, 300.0, 400.0, 380.02), 0.7001), app(1, BOX, 0.8)]
    assert_same_detections(same, reference)
    with pytest.raises(AssertionError, match="px from its twin"):
        assert_same_detections([app(1, (100.0, 100.0, 200.2, 200.0), 0.8), same[0]], reference)
    with pytest.raises(AssertionError, match="served vs"):
        assert_same_detections([*same, app(3, BOX, 0.6)], reference)
    with pytest.raises(AssertionError, match="without a twin"):
        assert_same_detections([app(1, BOX, 0.802), same[0]], reference)
