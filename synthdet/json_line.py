"""Run one of the project's Python tools as a subprocess and read the JSON line it ends with.

`synthdet check`/`up` run the pre-flight check (`python -m infra.preflight --json`),
`synthdet wake`/`status` run `python -m infra.power`: synthdet never imports infra, it
reads the one JSON line such a tool prints last.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class TimedOut(Exception):
    """The tool did not finish in time."""


class NoJsonLine(Exception):
    """The tool's last line is not JSON; the message is the last thing it said on stderr."""


def run_json_line(command: Sequence[str], cwd: Path, timeout_s: float) -> tuple[int, Any]:
    """(the tool's exit status, its last stdout line parsed as JSON)."""
    try:
        done = subprocess.run(
            list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise TimedOut(f"{timeout_s:.0f} s") from None
    try:
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise NoJsonLine((done.stderr.strip().splitlines() or ["no output"])[-1]) from None
