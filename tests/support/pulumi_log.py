"""Pulumi's log, as the bootstrap provider outside an engine shows it: on stderr.

Once an earlier test in the same process has set up Pulumi's runtime (the infra tests'
mocks), `pulumi.log.*` stops raising and writes to that runtime instead of falling back
to stderr, so a test reading the provider's lines from stderr depended on test order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pulumi
import pytest


def _to_stderr(message: str, *_args: Any, **_kwargs: Any) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(autouse=True)
def pulumi_log_on_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for level in ("debug", "info", "warn", "error"):
        monkeypatch.setattr(pulumi.log, level, _to_stderr)
    yield
