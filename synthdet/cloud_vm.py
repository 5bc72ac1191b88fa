"""A stack's VM, read and started through `python -m infra.power` (synthdet never imports infra).

The Pulumi side owns the cloud SDK layer (infra/gcp/cloud_api.py,
infra/aws/cloud_api.py); this side runs it as a subprocess, as `synthdet check`
runs the pre-flight check, and reads its one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.polling import poll
from synthdet.json_line import NoJsonLine, TimedOut, run_json_line

POWER_MODULE = "infra.power"
# Each call asks the cloud once or twice; the cloud SDK layer bounds every call itself.
CALL_TIMEOUT_S = 120.0


class VmError(Exception):
    """The VM could not be read or started; the message is one line."""


@dataclass(frozen=True)
class VmState:
    state: str  # running, starting, stopping, stopped, suspended, gone
    cloud_state: str  # the cloud's own word: RUNNING, TERMINATED, stopped ...
    where: str  # "gcp us-central1-a synthdet-vm-1a2b3c4"


def power(action: str, vm: Mapping[str, Any], work_dir: Path) -> VmState:
    """`state` or `start` (ask a stopped VM to start: returns once the cloud accepted it)."""
    command = [sys.executable, "-m", POWER_MODULE, action, json.dumps(dict(vm))]
    try:
        _, answer = run_json_line(command, work_dir, CALL_TIMEOUT_S)
    except TimedOut:
        raise VmError(f"the cloud did not answer within {CALL_TIMEOUT_S:.0f} s") from None
    except NoJsonLine as said:
        raise VmError(f"`python -m {POWER_MODULE}` failed: {said}") from None
    if "error" in answer:
        raise VmError(str(answer["error"]))
    return VmState(str(answer["state"]), str(answer["cloud_state"]), str(answer["where"]))


def wait_for(
    vm: Mapping[str, Any],
    states: Collection[str],
    work_dir: Path,
    *,
    timeout_s: float,
    every_s: float = 5.0,
    on_status: Callable[[str], None] | None = None,
) -> VmState:
    """Poll the VM until it is in one of `states`; VmError when time runs out first."""
    said = ""
    started = time.monotonic()

    def check() -> VmState:
        nonlocal said
        found = power("state", vm, work_dir)
        if on_status and found.cloud_state != said:
            on_status(f"{found.where}: {found.cloud_state}")
            said = found.cloud_state
        return found

    reached, last = poll(check, lambda found: found.state in states, timeout_s=timeout_s, every_s=every_s)
    if not reached:
        waited = time.monotonic() - started
        raise VmError(
            f"{last.where} is still {last.cloud_state} after {waited:.0f} s (waiting for {'/'.join(states)})"
        )
    return last
