"""AWS with a domain: ACM's validation record is said while `pulumi up` waits for it, not after.

`CertificateValidation` waits (up to 75 minutes) for the record the user has to
create; the `dns_records` output only appears once the update is over. So the
program logs the record as soon as ACM has issued it. The proof here: the
validation's creation is held until the record has been said.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.infra import harness
from tests.infra.test_replicas import FleetMocks, fake_bundle, fleet_mocks, fleet_run  # noqa: F401 - fixtures

VALIDATION = "aws:acm/certificateValidation:CertificateValidation"
SAID = (
    "create this DNS record now for synthdet.example.com's certificate: "
    "_x1.synthdet.example.com. CNAME _y2.acm-validations.aws."
)


@pytest.fixture
def record_said(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when the program's log says the validation record."""
    said = threading.Event()

    class Catcher(harness._LogCatcher):
        def _add(self, msg: str, *args: Any, **kwargs: Any) -> None:
            super()._add(msg, *args, **kwargs)
            if SAID in self.lines[-1]:
                said.set()

        debug = info = warning = error = _add

    monkeypatch.setattr(harness, "_LogCatcher", Catcher)
    return said


def test_the_record_is_said_when_the_certificate_is_requested(required, record_said: threading.Event) -> None:
    run = fleet_run("aws-t4", required, **{"synthdet:domain": "synthdet.example.com"})
    said = [line for line in run.logs if SAID in line]
    assert len(said) == 1 and "pulumi up waits for it, up to 75 minutes" in said[0]


def test_the_record_is_said_while_the_validation_waits(
    required, record_said: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation's creation (a thread, as in the engine) holds until the record was said: if
    saying it waited for the validation, the record would never come (the wait gives up after 10 s)."""
    made = FleetMocks.new_resource
    said_while_waiting: list[bool] = []

    def validation_waits_for_the_record(self: Any, args: Any) -> Any:
        if args.typ == VALIDATION:
            said_while_waiting.append(record_said.wait(timeout=10))
        return made(self, args)

    monkeypatch.setattr(FleetMocks, "new_resource", validation_waits_for_the_record)
    fleet_run("aws-t4", required, **{"synthdet:domain": "synthdet.example.com"})
    assert said_while_waiting == [True]


def test_without_a_domain_nothing_is_said(required) -> None:
    run = fleet_run("aws-t4", required)
    assert not [line for line in run.logs if "create this DNS record" in line]
