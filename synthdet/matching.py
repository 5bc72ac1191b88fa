"""Served detections against the reference pipeline's: one matcher for tests and benchmarks.

The accuracy bound (issue #21) a serving path must meet on the same checkpoint
and frames as `synthdet.reference`:

- a reference detection is matched by a served one with the same label, IoU >= 0.9
  and a score within 0.03 (reference detections by descending score, each taking the
  free served detection of highest IoU);
- at least 97% of the reference's detections are matched;
- no unmatched detection, served or reference, scores above threshold + 0.05 (a
  path may lose or gain detections only at the edge of the threshold).

The exact paths meet a far tighter form of it (tests/support/matching.py:
assert_same_detections, corners within 0.05 px, scores within 5e-4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A detection in plain form: {"label_id": int, "box": [x0, y0, x1, y1], "score": float}.
Detection = dict[str, Any]


@dataclass(frozen=True)
class Bound:
    """What counts as the same detection, and how many must be the same."""

    iou_min: float = 0.9
    score_tolerance: float = 0.03
    matched_min: float = 0.97
    margin: float = 0.05  # above threshold + margin, no detection may go unmatched


ACCURACY_BOUND = Bound()


def plain(detection: Mapping[str, Any]) -> Detection:
    """The app's JSON form ({"box": {"top_left": ..., "bottom_right": ...}, ...}) or the plain
    form (synthdet.reference) -> the plain form."""
    box = detection["box"]
    if isinstance(box, Mapping):
        box = [box["top_left"]["x"], box["top_left"]["y"], box["bottom_right"]["x"], box["bottom_right"]["y"]]
    return {
        "label_id": int(detection["label_id"]),
        "box": [float(v) for v in box],
        "score": float(detection["score"]),
    }


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class FrameMatch:
    """One frame: matched (served, reference) pairs and what is left on either side."""

    pairs: list[tuple[Detection, Detection]] = field(default_factory=list)
    unmatched_served: list[Detection] = field(default_factory=list)
    unmatched_reference: list[Detection] = field(default_factory=list)


def match_frame(
    served: Sequence[Mapping[str, Any]],
    reference: Sequence[Mapping[str, Any]],
    bound: Bound = ACCURACY_BOUND,
) -> FrameMatch:
    """Pair each reference detection (highest score first) with the free served detection of
    the same label, a score within the tolerance and the highest IoU at or above the minimum."""
    free = [plain(d) for d in served]
    result = FrameMatch()
    for want in sorted((plain(d) for d in reference), key=lambda d: -d["score"]):
        candidates = [
            (iou(got["box"], want["box"]), index)
            for index, got in enumerate(free)
            if got["label_id"] == want["label_id"]
            and abs(got["score"] - want["score"]) <= bound.score_tolerance
        ]
        best = max(candidates, default=None)
        if best is None or best[0] < bound.iou_min:
            result.unmatched_reference.append(want)
            continue
        result.pairs.append((free.pop(best[1]), want))
    result.unmatched_served = free
    return result


@dataclass
class MatchReport:
    """Every frame of a run against the reference, summed up against the bound."""

    reference: int = 0
    served: int = 0
    matched: int = 0
    max_score_diff: float = 0.0
    max_corner_diff_px: float = 0.0
    min_iou: float = 1.0
    # Unmatched detections scoring above threshold + margin: served extras, reference misses.
    extra_over_margin: int = 0
    missed_over_margin: int = 0
    worst_unmatched_score: float = 0.0
    threshold: float = 0.5
    bound: Bound = ACCURACY_BOUND

    @property
    def match_rate(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def within_bound(self) -> bool:
        return (
            self.match_rate >= self.bound.matched_min
            and self.extra_over_margin == 0
            and self.missed_over_margin == 0
        )

    def add(self, frame: FrameMatch) -> None:
        self.matched += len(frame.pairs)
        self.served += len(frame.pairs) + len(frame.unmatched_served)
        self.reference += len(frame.pairs) + len(frame.unmatched_reference)
        for got, want in frame.pairs:
            self.max_score_diff = max(self.max_score_diff, abs(got["score"] - want["score"]))
            corners = (abs(x - y) for x, y in zip(got["box"], want["box"], strict=True))
            self.max_corner_diff_px = max(self.max_corner_diff_px, *corners)
            self.min_iou = min(self.min_iou, iou(got["box"], want["box"]))
        edge = self.threshold + self.bound.margin
        self.extra_over_margin += sum(d["score"] > edge for d in frame.unmatched_served)
        self.missed_over_margin += sum(d["score"] > edge for d in frame.unmatched_reference)
        unmatched = [d["score"] for d in (*frame.unmatched_served, *frame.unmatched_reference)]
        self.worst_unmatched_score = max(self.worst_unmatched_score, *unmatched, 0.0)

    def summary(self) -> str:
        """One line: 'matched 204/204 (100.0%), ... within the bound'."""
        verdict = "within the bound" if self.within_bound else "OUTSIDE the bound"
        return (
            f"matched {self.matched}/{self.reference} ({self.match_rate:.1%}), "
            f"{self.served} served; unmatched above {self.threshold + self.bound.margin:.2f}: "
            f"{self.extra_over_margin} extra, {self.missed_over_margin} missed; "
            f"max score diff {self.max_score_diff:.4f}, min IoU {self.min_iou:.4f}: {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "match_rate": round(self.match_rate, 4),
            "within_bound": self.within_bound,
            "reference_detections": self.reference,
            "served_detections": self.served,
            "matched": self.matched,
            "max_score_diff": round(self.max_score_diff, 6),
            "max_corner_diff_px": round(self.max_corner_diff_px, 4),
            "min_iou": round(self.min_iou, 4),
            "extra_over_margin": self.extra_over_margin,
            "missed_over_margin": self.missed_over_margin,
            "worst_unmatched_score": round(self.worst_unmatched_score, 4),
        }


def match_frames(
    served: Sequence[Sequence[Mapping[str, Any]]],
    reference: Sequence[Sequence[Mapping[str, Any]]],
    threshold: float = 0.5,
    bound: Bound = ACCURACY_BOUND,
) -> MatchReport:
    """Frame by frame (the same frames, in the same order) against the reference."""
    if len(served) != len(reference):
        raise ValueError(f"{len(served)} served frames vs {len(reference)} reference frames")
    report = MatchReport(threshold=threshold, bound=bound)
    for got, want in zip(served, reference, strict=True):
        report.add(match_frame(got, want, bound))
    return report
