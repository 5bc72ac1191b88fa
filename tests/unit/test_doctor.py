"""doctor's verdict says what it measured, and never a speed it did not measure."""

from __future__ import annotations

import pytest

from synthdet.doctor import Report, verdict


@pytest.mark.parametrize(
    ("report", "says", "never"),
    [
        (Report(ready=True, frame_s=None), "speed not measured; without --quick", "ms per frame"),
        (Report(ready=True, frame_s=3.2), "3200 ms per frame here): it works, but", "usually"),
        (Report(ready=True, frame_s=0.9), "READY on CPU (900 ms per frame here)", "timeout"),
        (Report(ready=True, gpu=True, frame_s=0.05), "READY: GPU serving (50 ms per frame here)", "CPU"),
        (Report(ready=False, frame_s=0.05), "NOT READY", "per frame"),
    ],
    ids=["cpu, --quick", "slow cpu", "fast cpu", "gpu", "not ready"],
)
def test_the_verdict_quotes_only_what_was_measured(report: Report, says: str, never: str) -> None:
    text = verdict(report)
    assert says in text and never not in text
