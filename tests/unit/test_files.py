"""Verified atomic placement (bootstrap/files.py) run for real, through the local runner.

The same shell runs on a deployed host through sudo: the temporary beside the
target is private from its first byte and gone when the upload fails.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import pytest

from bootstrap import files
from bootstrap.local_runner import LocalRunner

OWNER = pwd.getpwuid(os.geteuid()).pw_name
GROUP = grp.getgrgid(os.getegid()).gr_name


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(files.PART_GLOB))


def test_the_temporary_is_private_while_it_is_written_and_the_result_has_its_mode(tmp_path: Path) -> None:
    source = tmp_path / "archive.mar"
    source.write_bytes(os.urandom(6 * 1024 * 1024))  # several chunks: the upload is seen mid-way
    target_dir = tmp_path / "store"
    target_dir.mkdir()
    modes: list[int] = []

    def look(_sent: int) -> None:
        modes.extend(stat.S_IMODE(p.stat().st_mode) for p in temporaries(target_dir))

    with LocalRunner() as runner:
        files.upload_atomic(
            runner,
            source,
            str(target_dir / "synthdet.mar"),
            mode=0o640,
            owner=OWNER,
            group=GROUP,
            on_sent=look,
        )
    assert modes, "the upload was never seen in flight"
    assert set(modes) == {0o600}
    placed = target_dir / "synthdet.mar"
    assert placed.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(placed.stat().st_mode) == 0o640
    assert temporaries(target_dir) == []


def test_a_corrupt_upload_replaces_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "url-secret"
    target.write_text("old\n")
    source = tmp_path / "new-secret"
    source.write_text("new\n")
    with LocalRunner() as runner, pytest.raises(files.UploadVerificationError, match="Nothing was replaced"):
        # The sha256 the host computes is not the one announced: a corrupt transfer.
        files.upload_atomic(runner, source, str(target), owner=OWNER, group=GROUP, expected_sha256="0" * 64)
    assert target.read_text() == "old\n"
    assert temporaries(tmp_path) == []


def test_a_failed_placement_says_what_to_do_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "site"
    with LocalRunner() as runner, pytest.raises(files.RunnerError, match="could not place.*rerun the deploy"):
        files.upload_atomic(runner, b"server {}\n", str(target), owner="no-such-user-here", group=GROUP)
    assert not target.exists()
    assert temporaries(tmp_path) == []
