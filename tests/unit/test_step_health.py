"""The health step's parts: workers READY in words people read, and the public URLs it checks."""

from __future__ import annotations

import re

import pytest

from bootstrap.api import DeployOptions
from bootstrap.steps import health
from bootstrap.steps.secret import Secret
from tests.support.fake_host import SECRET, make_run


def test_workers_ready_in_words_people_read() -> None:
    ready = '[{"modelName": "synthdet", "workers": [{"id": "9000", "status": "READY"}]}]'
    loading = '[{"workers": [{"status": "READY"}, {"status": "UNLOADING"}, {"status": "UNLOADING"}]}]'
    assert health.workers_ready(ready) == (True, "1 worker ready")
    # TorchServe says UNLOADING for a worker still loading its model: say "loading".
    assert health.workers_ready(loading) == (False, "1 worker ready, 2 workers loading")
    assert health.workers_ready('[{"workers": []}]') == (False, "no workers yet")
    assert health.workers_ready("<html>")[0] is False


WELL_FORMED = re.compile(r"^https://[A-Za-z0-9.\-\[\]:]+(:\d+)?(/[A-Za-z0-9_\-.~]+)+$")


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("203.0.113.7", 443, f"https://203.0.113.7/{SECRET}/predictions/synthdet"),
        ("203.0.113.7", 8443, f"https://203.0.113.7:8443/{SECRET}/predictions/synthdet"),
        ("gpu.example.org", 443, f"https://gpu.example.org/{SECRET}/predictions/synthdet"),
        ("2001:db8::1", 443, f"https://[2001:db8::1]/{SECRET}/predictions/synthdet"),
    ],
)
def test_public_urls(address: str, port: int, expected: str) -> None:
    run = make_run(options=DeployOptions(public_port=port), public_address=address)
    url = health.model_url(run, Secret(SECRET), "synthdet")
    assert url == expected
    assert WELL_FORMED.match(url)  # plain characters only: .NET's IsWellFormedUriString
