"""`./dev`'s setup shows the project's own progress and hides tool noise unless a tool fails.

The script is run for real, as a newcomer runs it, on a copy of itself in a
temporary folder next to a tiny project of its own (so the test does not
reinstall the 5 GB development venv): pip and setuptools print their usual
notes there (this machine's pip configuration alone adds a warning per
package index location, and setuptools prints an editable-install banner).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "dev-script-probe"
version = "0.0.1"

[tool.setuptools]
packages = ["probe"]
"""


def make_project(root: Path, requirements: str) -> Path:
    shutil.copy2(REPO / "dev", root / "dev")
    (root / "pyproject.toml").write_text(TINY_PYPROJECT)
    (root / "probe").mkdir()
    (root / "probe" / "__init__.py").write_text("")
    (root / "requirements-dev.txt").write_text(requirements)
    return root


def run_setup(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./dev", "setup"], cwd=root, capture_output=True, text=True, timeout=900, check=False
    )


def test_a_successful_setup_prints_only_the_projects_own_lines(tmp_path: Path) -> None:
    # An editable install: the path that prints setuptools' banner.
    root = make_project(tmp_path, "-e .\n")
    done = run_setup(root)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert (root / ".venv" / "bin" / "python").exists()
    lines = [line for line in output.splitlines() if line.strip()]
    # Every line is the script's own: "==> ..." steps or its "still working" note.
    strangers = [line for line in lines if "==>" not in line and "still working" not in line]
    assert strangers == [], f"tool noise on success: {strangers[:5]}"
    assert not any("WARNING" in line or "Editable installation" in line for line in lines)
    assert any("Python packages ready" in line for line in lines)
    # The last line is the next step: how `synthdet` gets on the PATH (README, Quick start).
    assert "source .venv/bin/activate" in lines[-1]


def test_a_failing_tool_shows_its_whole_output(tmp_path: Path) -> None:
    root = make_project(tmp_path, "dev-script-probe-no-such-package==0.0.0\n")
    done = run_setup(root)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "failed" in output
    # pip's own explanation, not a summary of it.
    assert "No matching distribution found for dev-script-probe-no-such-package" in output


@pytest.mark.parametrize("command", ["", "bogus"])
def test_usage_is_printed_for_an_unknown_command(command: str) -> None:
    done = subprocess.run(
        ["./dev", *([command] if command else [])], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "./dev test" in done.stdout
