"""A stack's VM through its cloud's own API: read its state, start it (`synthdet wake`/`status`).

`synthdet` imports nothing of infra (tests/unit/test_rooms.py), so it runs this
module as a subprocess, the way it runs the pre-flight check:

    python -m infra.power state '<cloud_vm>'
    python -m infra.power start '<cloud_vm>'

`<cloud_vm>` is the stack's `cloud_vm` output as JSON: {"cloud": "gcp",
"project", "zone", "name"} or {"cloud": "aws", "region", "instance_id",
"profile"}. The answer is one JSON line on stdout: {"state": ..., "cloud_state":
..., "where": ...} with `state` one of running, starting, stopping, stopped,
suspended, gone; or {"error": "one line: what failed and what to do"} and exit
status 1. `start` asks a stopped VM to start and answers with the state after
the request (it does not wait: the caller polls `state`). Credentials and
endpoints are the cloud SDK layer's (infra/gcp/cloud_api.py, infra/aws/cloud_api.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# The clouds' words for a VM's life, in ours.
GCP_STATES = {
    "PROVISIONING": "starting",
    "STAGING": "starting",
    "REPAIRING": "starting",
    "RUNNING": "running",
    "STOPPING": "stopping",
    "SUSPENDING": "stopping",
    "TERMINATED": "stopped",  # what a VM whose guest powered off becomes: stopped, disk kept
    "STOPPED": "stopped",
    "SUSPENDED": "suspended",
}
AWS_STATES = {
    "pending": "starting",
    "running": "running",
    "stopping": "stopping",
    "stopped": "stopped",
    "shutting-down": "gone",
    "terminated": "gone",
}


class PowerError(Exception):
    """The VM could not be read or started; the message is one line."""


@dataclass(frozen=True)
class VmState:
    state: str  # running, starting, stopping, stopped, suspended, gone
    cloud_state: str  # the cloud's own word (TERMINATED, stopped ...)
    where: str  # "gcp us-central1-a synthdet-vm-1a2b3c4", "aws us-east-1 i-0..."


def _field(vm: Mapping[str, Any], key: str) -> str:
    value = vm.get(key)
    if not value:
        raise PowerError(
            f"the stack's cloud_vm output has no {key!r}: run `pulumi up` to refresh its outputs"
        )
    return str(value)


def _gcp(vm: Mapping[str, Any], start: bool) -> VmState:
    from infra.gcp import cloud_api

    project, zone, name = _field(vm, "project"), _field(vm, "zone"), _field(vm, "name")
    where = f"gcp {zone} {name}"
    try:
        api = cloud_api.GcpApi.connect(project)
        try:
            status = api.instance(zone, name).status
        except cloud_api.NotFound:
            return VmState("gone", "NOT FOUND", where)
        if start and GCP_STATES.get(status) == "stopped":
            api.start_instance(zone, name)
            status = api.instance(zone, name).status
    except cloud_api.GcpApiError as exc:
        raise PowerError(str(exc)) from None
    return VmState(GCP_STATES.get(status, status.lower()), status, where)


def _aws(vm: Mapping[str, Any], start: bool) -> VmState:
    from infra.aws import cloud_api

    region, instance_id = _field(vm, "region"), _field(vm, "instance_id")
    where = f"aws {region} {instance_id}"
    try:
        api = cloud_api.AwsApi(region, profile=str(vm.get("profile") or "") or None)
        try:
            state = api.instance(instance_id).state
        except cloud_api.NotFound:
            return VmState("gone", "not found", where)
        if start and AWS_STATES.get(state) == "stopped":
            api.start_instance(instance_id)
            state = api.instance(instance_id).state
    except cloud_api.AwsApiError as exc:
        raise PowerError(str(exc)) from None
    return VmState(AWS_STATES.get(state, state), state, where)


def vm_state(vm: Mapping[str, Any], *, start: bool = False) -> VmState:
    """The VM's state; with `start`, after asking a stopped VM to start."""
    cloud = vm.get("cloud")
    if cloud == "gcp":
        return _gcp(vm, start)
    if cloud == "aws":
        return _aws(vm, start)
    raise PowerError(f"cloud_vm names no cloud this can start ({cloud!r}): gcp or aws")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.power", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("state", "start"))
    parser.add_argument("vm", help="the stack's cloud_vm output, as JSON")
    args = parser.parse_args(argv)
    try:
        vm = json.loads(args.vm)
        if not isinstance(vm, dict):
            raise PowerError("cloud_vm must be a JSON object")
        answer: dict[str, Any] = asdict(vm_state(vm, start=args.action == "start"))
    except (PowerError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
