"""`synthdet smoke` judges an endpoint against the app's 2 s deadline, as the app would.

Against a real HTTP server on loopback that answers as slowly as each test asks
(tests/support/slow_endpoint.py), through the command as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serving.contract import APP_TIMEOUT_S
from tests.support.slow_endpoint import endpoint

# The app's deadline, restated: docs/client-contract.md, "Timeout: 2000 ms per request".
DEADLINE_S = 2.0
ANSWER = json.dumps(
    [
        {
            "label": "cereal_cheerios_honeynut",
            "label_id": 5,
            "box": {"top_left": {"x": 412.5, "y": 88.0}, "bottom_right": {"x": 530.1, "y": 301.7}},
            "score": 0.993,
        }
    ]
).encode()


def smoke(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthdet.cli", "smoke", f"{url}/predictions/synthdet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
    )


def test_the_deadline_is_the_apps() -> None:
    assert APP_TIMEOUT_S == DEADLINE_S


@pytest.mark.parametrize("delay_s", [0.0, 1.5])
def test_an_answer_within_the_deadline_passes(delay_s: float) -> None:
    with endpoint(ANSWER, delay_s=delay_s) as url:
        done = smoke(url, "--strict")
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stderr and "1 detections" in done.stderr
    assert "LATE" not in done.stderr and "drop" not in done.stderr


def test_a_late_answer_warns_what_the_app_would_do_and_exits_0() -> None:
    with endpoint(ANSWER, delay_s=DEADLINE_S + 0.3) as url:
        done = smoke(url)
    assert done.returncode == 0, done.stderr
    words = " ".join(done.stderr.split())
    assert "OK" not in words and "LATE" in words
    assert "the app would drop it, show nothing for that frame and send its next one" in words
    assert "2 s deadline" in words and "--strict" in words


def test_a_late_answer_fails_with_strict() -> None:
    with endpoint(ANSWER, delay_s=DEADLINE_S + 0.3) as url:
        done = smoke(url, "--strict")
        as_json = smoke(url, "--strict", "--json")
    assert done.returncode == 1
    assert "error:" in done.stderr and "would drop it" in " ".join(done.stderr.split())
    assert as_json.returncode == 1
    verdict = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert verdict["ok"] is False and verdict["in_time"] is False
    assert verdict["deadline_ms"] == 2000 and verdict["latency_ms"] > 2000
    assert verdict["detections"] == 1


def test_json_says_in_time_for_a_prompt_answer() -> None:
    with endpoint(ANSWER) as url:
        done = smoke(url, "--json")
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0
    assert verdict["ok"] is True and verdict["in_time"] is True and "warning" not in verdict
