"""Small things the CLI says: help that fits 80 columns, the phone hint naming only what is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from synthdet.commands.local import phone_hint

OPTION_ROW = re.compile(r"^│\s+(\*\s+)?--[a-z]")


def help_at_80_columns(command: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "synthdet.cli", command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"},
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def option_row(lines: list[str], option: str) -> str:
    """The help cell of one option, its wrapped lines joined."""
    start = next(i for i, line in enumerate(lines) if re.search(rf"\s{option}\s", line))
    end = next(
        (i for i in range(start + 1, len(lines)) if OPTION_ROW.match(lines[i]) or lines[i].startswith("╰")),
        len(lines),
    )
    return " ".join(" ".join(line.strip("│ ").split()) for line in lines[start:end])


@pytest.mark.parametrize("command", ["deploy", "undeploy"])
def test_the_known_hosts_default_shows_whole_at_80_columns(command: str) -> None:
    lines = help_at_80_columns(command)
    assert max(len(line) for line in lines) <= 80
    row = option_row(lines, "--known-hosts")
    # The test's HOME is a temporary folder: the default is shown relative to it, as ~.
    assert "Default: known_hosts in ~/.config/synthdet" in row, row
    assert "…" not in row


@pytest.mark.parametrize(
    ("host", "https", "expected"),
    [
        ("127.0.0.1", False, " (a phone's browser needs --host 0.0.0.0 --https for its camera)"),
        ("127.0.0.1", True, " (a phone's browser needs --host 0.0.0.0 for its camera)"),
        ("0.0.0.0", False, " (a phone's browser needs --https for its camera)"),
        ("192.168.1.20", False, " (a phone's browser needs --https for its camera)"),
        ("0.0.0.0", True, ""),
        ("localhost", True, " (a phone's browser needs --host 0.0.0.0 for its camera)"),
    ],
)
def test_the_phone_hint_names_only_what_is_missing(host: str, https: bool, expected: str) -> None:
    assert phone_hint(host, https) == expected
