"""A Pulumi stack's outputs, read with the Pulumi CLI (`synthdet wake`, `synthdet status`).

`pulumi stack output --json --show-secrets --stack NAME`, as CI does: the
endpoint is a secret output (the URL carries the URL secret), so it is read
here and never printed whole. What the program exports is in infra/__main__.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StackError(Exception):
    """The outputs could not be read; the message says what to do."""


def pulumi_command() -> str:
    """The Pulumi CLI: on PATH, or where its installer puts it (~/.pulumi/bin)."""
    found = shutil.which("pulumi")
    if found:
        return found
    installed = Path.home() / ".pulumi" / "bin" / "pulumi"
    if installed.is_file():
        return str(installed)
    raise StackError(
        "the Pulumi CLI is not installed: `curl -fsSL https://get.pulumi.com | sh` "
        "(https://www.pulumi.com/docs/install/)"
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class StackOutputs:
    stack: str
    values: dict[str, Any]

    @property
    def endpoint(self) -> str:
        value = self.values.get("endpoint")
        if not isinstance(value, str) or not value:
            raise StackError(
                f"stack {self.stack} has no endpoint output: run `pulumi up --stack {self.stack}`"
            )
        return value

    @property
    def cert_sha256(self) -> str | None:
        value = self.values.get("cert_sha256")
        return value if isinstance(value, str) and value else None

    @property
    def certificate_source(self) -> str | None:
        """How the deploy got its certificate: "acme", "self-signed" or "user" (its `certificate`)."""
        value = self.values.get("certificate")
        source = value.get("source") if isinstance(value, dict) else None
        return source if isinstance(source, str) and source else None

    @property
    def is_fleet(self) -> bool:
        """Replicas behind a load balancer (they export a group, not one VM)."""
        return "group_id" in self.values

    @property
    def cloud_vm(self) -> dict[str, Any] | None:
        """Where the cloud's API finds the VM; None: no VM of the stack's (ssh stack, fleet)."""
        value = self.values.get("cloud_vm")
        return value if isinstance(value, dict) and value.get("cloud") else None

    @property
    def idle_stop_minutes(self) -> int | None:
        """The stack's setting (0: off); None: a stack deployed before idle stop existed."""
        value = _number(self.values.get("idle_stop_minutes"))
        return None if value is None else int(value)

    @property
    def hourly_cost_usd(self) -> float | None:
        return _number(self.values.get("hourly_cost_usd"))

    @property
    def stopped_hourly_cost_usd(self) -> float | None:
        return _number(self.values.get("stopped_hourly_cost_usd"))


def read_stack_outputs(stack: str, work_dir: Path, timeout_s: float = 120.0) -> StackOutputs:
    """Every output of the stack, secrets in the clear (kept in memory, never logged)."""
    command = [pulumi_command(), "stack", "output", "--json", "--show-secrets", "--stack", stack]
    try:
        done = subprocess.run(
            command, cwd=work_dir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise StackError(
            f"`pulumi stack output --stack {stack}` did not answer within {timeout_s:.0f} s"
        ) from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise StackError(f"`pulumi stack output --stack {stack}` failed: {said}")
    try:
        values = json.loads(done.stdout or "{}")
    except ValueError:
        raise StackError(f"`pulumi stack output --stack {stack}` printed no JSON") from None
    if not isinstance(values, dict) or not values:
        raise StackError(f"stack {stack} has no outputs yet: run `pulumi up --stack {stack}` first")
    return StackOutputs(stack, values)
