"""A zone move (`synthdet up` on a stockout) changes only what sits in a zone.

`synthdet up` moves a stack by its zone key: `gcp:zone` (which the program also
hands to the default GCP provider) or `synthdet:availabilityZone`. Run under
mocks in two zones of one region, the program must give every regional and
global resource (network, firewall rules, static IP / Elastic IP, security
group, key pair, SSH key, URL secret) the very same inputs: a changed input
there would make Pulumi update or replace it, and a new address would change
the URL and the QR code. Only the VM moves. (The GCP provider's own config
change is an update, never a replacement: synthdet/cloud_up.py says why.)
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.harness import BOOTSTRAP_TYPE, ProgramRun, run_program, unwrap

GCP_INSTANCE = "gcp:compute/instance:Instance"
AWS_INSTANCE = "aws:ec2/instance:Instance"


def inputs_by_resource(run: ProgramRun, zonal: set[str]) -> dict[tuple[str, str], Any]:
    """Every resource's inputs but the zonal ones' (and the bootstrap's, which follows the VM)."""
    return {
        (r.type, r.name): unwrap(r.inputs)
        for r in run.resources
        if r.type not in zonal and r.type != BOOTSTRAP_TYPE
    }


@pytest.mark.parametrize(
    ("stack", "key", "zones", "instance", "zone_input"),
    [
        ("gcp-t4", "gcp:zone", ("us-central1-a", "us-central1-b"), GCP_INSTANCE, "zone"),
        ("gcp-cpu", "gcp:zone", ("us-central1-a", "us-central1-c"), GCP_INSTANCE, "zone"),
        (
            "aws-t4",
            "synthdet:availabilityZone",
            ("us-east-1a", "us-east-1b"),
            AWS_INSTANCE,
            "availabilityZone",
        ),
    ],
)
def test_only_the_vm_changes_when_the_zone_moves(
    required: Any, stack: str, key: str, zones: tuple[str, str], instance: str, zone_input: str
) -> None:
    first, second = (run_program(stack, required(stack) | {key: zone}) for zone in zones)
    assert [first.one(instance).plain(zone_input), second.one(instance).plain(zone_input)] == list(zones)
    before, after = inputs_by_resource(first, {instance}), inputs_by_resource(second, {instance})
    assert before.keys() == after.keys()
    changed = sorted(name for name, inputs in before.items() if after[name] != inputs)
    assert changed == [], f"a zone move would change {changed}"


def test_the_static_ip_stays_in_the_region_of_both_zones(required: Any) -> None:
    """The address names its region itself (derived from gcp:zone, the same for both zones),
    rather than leaving it to the provider's configuration."""
    for zone in ("us-central1-a", "us-central1-f"):
        run = run_program("gcp-t4", required("gcp-t4") | {"gcp:zone": zone})
        assert run.one("gcp:compute/address:Address").plain("region") == "us-central1"
