"""The suite runs in a home and a cache of its own (tests/conftest.py).

So it neither writes into the user's caches, keys and known_hosts, nor trips
over another `synthdet serve` using them on the same machine meanwhile.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from serving.archive import cache_dir

ACCOUNT_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)


def test_home_and_cache_are_the_sessions_own() -> None:
    assert Path.home() != ACCOUNT_HOME
    assert not cache_dir().is_relative_to(ACCOUNT_HOME)
    assert cache_dir().parent == Path.home().parent  # both in the session's temporary folder


def test_subprocesses_inherit_them() -> None:
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from serving.archive import cache_dir; "
            "print(Path.home()); print(cache_dir())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert seen == [str(Path.home()), str(cache_dir())]
