"""A test host deployed once and shared by the exposure, fault and overload system tests.

`test_deploy.py` deploys through the CLI and checks the deploy itself; these
suites need a deployed host to attack, break and overload, and deploying costs
minutes on 2 cores, so they share one (the `deployed_host` fixture in
tests/system/conftest.py). Every test leaves it serving the model it found.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tenacity

from bootstrap import deploy as deploy_lib
from bootstrap.api import DeployOptions, DeployResult, PipSource, SshTarget
from bootstrap.steps.base import MANAGEMENT_PORT, MODEL_STORE, SERVICE_USER, TORCHSERVE_PORTS, UNIT_NAME
from serving import endpoint
from serving.contract import smoke
from serving.models import ModelSpec
from tests.support import testhost as th

# Two CPU cores shared with TorchServe's warm-up and other suites.
READY_TIMEOUT_S = 240.0


@dataclass
class Deployment:
    info: th.TestHostInfo
    target: SshTarget
    options: DeployOptions
    checkpoint: Path
    result: DeployResult
    deploy_s: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.result.endpoint

    @property
    def secret(self) -> str:
        return httpx.URL(self.endpoint).path.split("/")[1]

    @property
    def base(self) -> str:
        return endpoint.base_url(self.info.host, 443)

    @property
    def health_url(self) -> str:
        return endpoint.health_url(self.base, self.secret)

    def redeploy(self, checkpoint: Path | None = None) -> tuple[DeployResult, float]:
        started = time.monotonic()
        spec = ModelSpec("synthdet", checkpoint or self.checkpoint)
        result = deploy_lib.deploy(self.target, [spec], self.options)
        return result, time.monotonic() - started


def deploy_to(info: th.TestHostInfo, checkpoint: Path, known_hosts: Path) -> Deployment:
    find_links = info.deploy_args[info.deploy_args.index("--pip-find-links") + 1]
    trusted = info.deploy_args[info.deploy_args.index("--pip-trusted-host") + 1]
    target = SshTarget(info.host, info.user, Path(info.key), port=info.port, known_hosts=known_hosts)
    options = DeployOptions(pip=PipSource(find_links=find_links, trusted_hosts=(trusted,)))
    started = time.monotonic()
    result = deploy_lib.deploy(target, [ModelSpec("synthdet", checkpoint)], options)
    return Deployment(info, target, options, checkpoint, result, time.monotonic() - started)


def guest(info: th.TestHostInfo, cmd: str | list[str], timeout: float = 120) -> str:
    rc, out, err = th.ssh_exec(info, cmd, timeout=timeout)
    assert rc == 0, f"{cmd!r} failed in the guest ({rc}): {err or out}"
    return out


def served_sha(info: th.TestHostInfo, name: str = "synthdet") -> str:
    return guest(info, f"sha256sum {MODEL_STORE}/{name}.mar").split()[0]


def loaded_sha(info: th.TestHostInfo, name: str = "synthdet") -> str:
    """sha256 of the archive as TorchServe's own mount namespace sees it (what it loads)."""
    java = guest(info, f"pgrep -u {SERVICE_USER} -x java").split()[0]
    return guest(info, f"nsenter -t {java} -m sha256sum {MODEL_STORE}/{name}.mar").split()[0]


def management(info: th.TestHostInfo, path: str) -> object:
    out = guest(info, f"curl -sf http://127.0.0.1:{MANAGEMENT_PORT}{path}")
    return json.loads(out)


def worker_pids(info: th.TestHostInfo, name: str = "synthdet") -> list[int]:
    described = management(info, f"/models/{name}")
    assert isinstance(described, list)
    return sorted(int(w["pid"]) for w in described[0]["workers"] if w.get("pid"))


def service_pids(info: th.TestHostInfo) -> tuple[str, str]:
    """(systemd's MainPID, the java frontend's pid): a restart changes both."""
    main = guest(info, f"systemctl show -p MainPID --value {UNIT_NAME}").strip()
    java = guest(info, f"pgrep -u {SERVICE_USER} -x java || true").strip()
    return main, java


def _poll(what: str, attempt: object, timeout_s: float, every_s: float) -> float:
    """Call `attempt` until it returns without raising; seconds it took (tenacity does the loop)."""
    started = time.monotonic()
    try:
        tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout_s), wait=tenacity.wait_fixed(every_s), reraise=True
        )(attempt)  # type: ignore[call-overload]
    except Exception as exc:  # noqa: BLE001 - the last failure says why
        raise AssertionError(f"{what} within {timeout_s:.0f} s: {exc}") from exc
    return time.monotonic() - started


def wait_healthy(url: str, timeout_s: float = READY_TIMEOUT_S, every_s: float = 0.2) -> float:
    """Poll a health URL (nginx + TorchServe up, no inference) until it says 200; seconds it took."""

    def healthy() -> None:
        status = httpx.get(url, verify=False, timeout=5).status_code
        if status != 200:
            raise AssertionError(f"HTTP {status}")

    return _poll(f"{url} was not healthy", healthy, timeout_s, every_s)


def wait_serving(url: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Poll until one app-style request succeeds; returns the seconds it took."""
    return _poll(f"{url} did not serve", lambda: smoke(url, timeout_s=60), timeout_s, 0.5)


# Connects to each port and prints "PORT open" or "PORT refused" (run as different users).
PORT_PROBE = (
    "import socket, sys\n"
    "for port in map(int, sys.argv[1:]):\n"
    "    try:\n"
    "        socket.create_connection(('127.0.0.1', port), timeout=3).close()\n"
    "        print(port, 'open')\n"
    "    except OSError:\n"
    "        print(port, 'refused')\n"
)


def torchserve_ports_as(info: th.TestHostInfo, user: str) -> dict[int, str]:
    """What `user` on the host finds on each TorchServe port: 'open' or 'refused'."""
    ports = " ".join(str(p) for p in TORCHSERVE_PORTS)
    out = guest(info, f"runuser -u {user} -- python3 -c {shlex.quote(PORT_PROBE)} {ports}")
    return {int(port): state for port, state in (line.split() for line in out.splitlines())}
