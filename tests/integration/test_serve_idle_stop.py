"""`synthdet serve --idle-stop-minutes`: a laptop left serving stops by itself, cleanly.

Real TorchServe on this machine (CPU). The setting takes fractions of a minute, so the
test waits seconds, not minutes; what resets the clock is tests/unit/test_front_idle.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from synthdet.local_serve import free_port

pytestmark = pytest.mark.integration
IDLE_S = 6.0


def test_serve_stops_cleanly_after_the_idle_minutes(unity_checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [
        *(sys.executable, "-m", "synthdet.cli", "serve"),
        *("--model", str(unity_checkpoint), "--port", str(port), "--workdir", str(tmp_path / "work")),
        *("--idle-stop-minutes", str(IDLE_S / 60)),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until it serves (the smoke request has just been answered)
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        serving_since = time.monotonic()
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        assert any("java" in " ".join(p.cmdline()) for p in family), "".join(lines)
        rest, _ = process.communicate(timeout=IDLE_S + 60)
        lines.append(rest)
        served_s = time.monotonic() - serving_since
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "no prediction request for 0.1 minutes (--idle-stop-minutes): stopping" in output
    # Not before its time (the smoke request was the last prediction), and not much after.
    assert IDLE_S - 2 <= served_s <= IDLE_S + 30, served_s
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5)
