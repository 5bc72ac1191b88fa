"""Served detections against the reference pipeline's (synthdet.reference), in tests.

Both checks use the one matcher, synthdet.matching (the benchmarks use it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synthdet.matching import Bound, MatchReport, match_frame

SCORE_TOLERANCE = 5e-4  # float reassociation (channels_last, folded BatchNorm, threads) moves scores ~1e-4
EXACT = Bound(score_tolerance=SCORE_TOLERANCE, matched_min=1.0, margin=0.0)


def assert_same_detections(
    served: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], tolerance: float = 0.05
) -> None:
    """Box by box: the same detections, each paired with one reference detection of the same
    label, corners within `tolerance` px and a score within SCORE_TOLERANCE, none left over."""
    assert len(served) == len(reference), f"{len(served)} served vs {len(reference)} reference"
    frame = match_frame(served, reference, EXACT)
    assert not frame.unmatched_served, f"served detections without a twin: {frame.unmatched_served}"
    assert not frame.unmatched_reference, f"reference detections not served: {frame.unmatched_reference}"
    for got, want in frame.pairs:
        worst = max(abs(x - y) for x, y in zip(got["box"], want["box"], strict=True))
        assert worst <= tolerance, f"{got} is {worst:.3f} px from its twin {want}"


def assert_within_bound(report: MatchReport) -> None:
    """The accuracy bound (synthdet.matching.ACCURACY_BOUND), with the numbers if it fails."""
    assert report.reference > 0, "no reference detections: the bound would mean nothing"
    assert report.within_bound, report.summary()
