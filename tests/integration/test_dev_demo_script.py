"""`./dev demo` says how `synthdet` gets on the PATH, then becomes `synthdet serve` (exec):
the signals a terminal or a supervisor sends reach serve itself, and the exit status is serve's.

The script runs for real on a copy of itself next to a venv whose `synthdet` is a
stand-in for `synthdet serve` (the real one's own stopping is tested in test_cli.py):
it says it serves, and on SIGINT or SIGTERM says "stopped" and exits with $FAKE_RC.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.polling import poll

REPO = Path(__file__).resolve().parents[2]
NEXT_STEP = "next: source .venv/bin/activate"

STAND_IN = f"""#!{sys.executable}
import os, signal, sys
def stop(*_):
    print("stopped", flush=True)
    sys.exit(int(os.environ.get("FAKE_RC", "0")))
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
print("args:", " ".join(sys.argv[1:]), flush=True)
print("pid:", os.getpid(), flush=True)
if os.environ.get("FAKE_FAIL"):
    sys.exit(3)
print("Serving. Press Ctrl-C to stop.", flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("dev", "requirements-dev.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "synthdet").write_text(STAND_IN)
    (bin_dir / "synthdet").chmod(0o755)
    # The setup stamp of these dependency files: ./dev finds the venv current, installs nothing.
    stamp = hashlib.sha256(
        (tmp_path / "requirements-dev.txt").read_bytes() + (tmp_path / "pyproject.toml").read_bytes()
    )
    (tmp_path / ".venv" / ".synthdet-setup").write_text(stamp.hexdigest() + "\n")
    return tmp_path


def start(project: Path, out: Path, **env: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(
            ["./dev", "demo", "--port", "1234"],
            cwd=project,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            env={**os.environ, **env},
        )


def serving(process: subprocess.Popen[bytes], out: Path) -> None:
    ready, _ = poll(
        lambda: out.read_text(errors="replace"),
        lambda text: "Press Ctrl-C" in text or process.poll() is not None,
        timeout_s=60,
        every_s=0.2,
    )
    assert ready and process.poll() is None, out.read_text(errors="replace")


@pytest.mark.parametrize(
    ("how", "send"),
    [
        ("Ctrl-C: SIGINT to the whole process group", lambda p: os.killpg(p.pid, signal.SIGINT)),
        ("SIGTERM to the process the supervisor started", lambda p: os.kill(p.pid, signal.SIGTERM)),
    ],
)
def test_the_next_step_comes_first_and_serve_gets_the_signals(
    project: Path, tmp_path: Path, how: str, send: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    out = tmp_path / "out.txt"
    process = start(project, out, FAKE_RC="0")
    try:
        serving(process, out)
        send(process)
        rc = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert rc == 0, (how, lines)
    assert lines.count("stopped") == 1, lines  # the signal reached serve once
    assert "args: serve --demo-model --port 1234" in lines
    # exec: serve is the very process that was started, nothing stands between.
    assert f"pid: {process.pid}" in lines
    said = next(i for i, line in enumerate(lines) if NEXT_STEP in line)
    assert said < lines.index("Serving. Press Ctrl-C to stop.")


def test_a_failing_serve_keeps_its_exit_status(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    process = start(project, out, FAKE_FAIL="1")
    assert process.wait(timeout=60) == 3
    assert NEXT_STEP in out.read_text()
