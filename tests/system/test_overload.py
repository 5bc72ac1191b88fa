"""Overload through nginx on a deployed host: fast 503/429 with Retry-After, never late.

One phone offers 3x what the host's CPU worker can do for 60 s
(tests/support/overload.py). nginx lets one request at a time reach TorchServe
(on a CPU one frame already takes longer than the app's deadline) and answers
the rest at once with a JSON 503 and `Retry-After: 1`.
"""

from __future__ import annotations

import pytest

from bootstrap.steps.base import SERVICE_USER, UNIT_NAME
from serving.contract import smoke
from tests.support.deployment import Deployment, guest, service_pids, worker_pids
from tests.support.overload import assert_refused_fast_and_nothing_late, run_overload

pytestmark = pytest.mark.system


def _service_memory_mb(deployed: Deployment) -> float:
    """What the service's cgroup holds (frontend, workers, page cache it caused)."""
    pids = guest(deployed.info, f"systemctl show -p ControlGroup --value {UNIT_NAME}").strip()
    total_kb = guest(
        deployed.info,
        f"for p in $(cat /sys/fs/cgroup{pids}/cgroup.procs 2>/dev/null || pgrep -u {SERVICE_USER}); do "
        "awk '/VmRSS/ {print $2}' /proc/$p/status; done | awk '{s += $1} END {print s + 0}'",
    )
    return float(total_kb) / 1024


def test_three_times_capacity_through_nginx_is_refused_fast_never_late(
    deployed_host: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = deployed_host.info
    pids, workers = service_pids(info), worker_pids(info)
    before_mb = _service_memory_mb(deployed_host)
    run = run_overload(deployed_host.endpoint, monkeypatch)
    after_mb = _service_memory_mb(deployed_host)
    print(f"\noverload (through nginx): {run.summary()}; memory {before_mb:.0f} -> {after_mb:.0f} MiB")
    # nginx lets one frame at a time reach the CPU worker: nothing ever waits behind another.
    assert_refused_fast_and_nothing_late(run, admitted=1, retry_after=True)
    assert after_mb < before_mb * 1.25 + 200, "memory grew under overload"
    # Healthy afterwards: nothing restarted, nginx still up, a frame is served.
    assert service_pids(info) == pids and worker_pids(info) == workers
    assert guest(info, "systemctl is-active nginx").strip() == "active"
    smoke(deployed_host.endpoint, timeout_s=60)
