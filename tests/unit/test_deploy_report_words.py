"""What a deploy says about each step: the health check is "checked ... serving", never
"unchanged" (it only looks; "changed" means nothing for it), on a first deploy and after."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from bootstrap.api import DeployOptions, LineReporter
from bootstrap.deploy import execute
from bootstrap.steps import health
from bootstrap.steps.acme import ServedCertificate
from bootstrap.steps.base import HostState
from bootstrap.steps.secret import Secret
from bootstrap.steps.step import Done
from bootstrap.steps.torchserve import TorchServe
from serving.certs import make_self_signed
from synthdet.commands.deploy import RichReporter
from tests.support.fake_host import SECRET, FakeDebianHost, FakeRunner, deploy_run, make_run
from tests.support.slow_endpoint import endpoint

ONE_BOX = json.dumps(
    [
        {
            "label": "cereal_cheerios_honeynut",
            "label_id": 5,
            "box": {"top_left": {"x": 10.0, "y": 20.0}, "bottom_right": {"x": 30.0, "y": 40.0}},
            "score": 0.9,
        }
    ]
).encode()


@pytest.fixture
def host() -> Iterator[FakeDebianHost]:
    fake = FakeDebianHost()
    try:
        yield fake
    finally:
        fake.close()


def test_a_first_deploy_reports_health_as_checked_not_unchanged(host: FakeDebianHost, tmp_path: Path) -> None:
    lines: list[str] = []
    run = deploy_run(host, tmp_path)
    _, reports = execute(replace(run, progress=LineReporter(lines.append, "")), HostState())
    report = {r.name: r for r in reports}["health"]
    assert report.changed is None and report.detail.startswith("serving")
    assert any(r.changed for r in reports)  # a first deploy: the other steps did change the host
    said = [line for line in lines if line.startswith("health:")]
    assert said == ["health: checked (serving (smoke test skipped))"]


def health_detail(delay_s: float) -> Done[None]:
    """The health step against an endpoint answering after `delay_s`, TorchServe READY."""
    cert_pem, key_pem = make_self_signed(["127.0.0.1"])
    ready = {"status": 200, "body": json.dumps([{"workers": [{"status": "READY"}]}])}
    with endpoint(ONE_BOX, delay_s=delay_s, tls=(cert_pem, key_pem)) as url:
        run = make_run(
            options=DeployOptions(public_port=int(url.rsplit(":", 1)[1]), health_timeout_s=30),
            host=FakeRunner().on(r"/models/synthdet ", json.dumps(ready)),
            public_address="127.0.0.1",
        )
        done = health.apply(
            run,
            TorchServe(("synthdet",)),
            Secret(SECRET),
            ServedCertificate(cert_pem, "self-signed", public=False),
        )
    return done


def test_the_health_step_names_what_it_served() -> None:
    done = health_detail(0.0)
    assert done.changed is None
    assert done.detail.startswith("serving: synthdet ") and done.detail.endswith(" ms, 1 boxes")


def test_the_health_step_says_when_a_phone_would_drop_the_answer() -> None:
    # Past the app's 2 s deadline (docs/client-contract.md).
    done = health_detail(2.3)
    assert done.changed is None
    assert done.detail.endswith(" ms, 1 boxes (later than the app's deadline: a phone would drop it)")


@pytest.mark.parametrize(("changed", "word"), [(None, "checked"), (True, "changed"), (False, "unchanged")])
def test_the_cli_marks_a_check_apart_from_changes(changed: bool | None, word: str) -> None:
    out = io.StringIO()
    RichReporter(Console(file=out, width=100, color_system=None)).step_done("health", changed, "serving")
    assert out.getvalue().split() == [word, "health", "serving"]
