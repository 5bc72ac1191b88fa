"""A test host deployed once and shared by the exposure, fault and overload system tests.

`test_deploy.py` deploys through the CLI and checks the deploy itself; these
suites need a deployed host to attack, break and overload, and deploying costs
minutes on 2 cores, so they share one (the `deployed_host` fixture in
tests/system/conftest.py). Every test leaves it serving the model it found.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bootstrap import deploy as deploy_lib
from bootstrap.api import DeployOptions, DeployResult, PipSource, SshTarget
from bootstrap.steps.base import MANAGEMENT_PORT, MODEL_STORE, SERVICE_USER, TORCHSERVE_PORTS, UNIT_NAME
from serving import endpoint
from serving.contract import smoke
from serving.models import ModelSpec
from serving.polling import retry
from tests.support import testhost as th

REPO = Path(__file__).resolve().parents[2]
# Two CPU cores shared with TorchServe's warm-up and other suites.
READY_TIMEOUT_S = 240.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_test_hosts() -> None:
    """Skip where this machine cannot boot test hosts; in CI (CI set) fail instead."""
    ok, reason = th.is_supported()
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI is set, so the system tests must run, but: {reason}", pytrace=False)
    pytest.skip(f"system tests need a test host: {reason}")


def wheelhouse_pip(info: th.TestHostInfo) -> PipSource:
    """Packages from the test host's wheelhouse, as its `deploy_args` give them to the CLI."""
    args = info.deploy_args
    find_links = args[args.index("--pip-find-links") + 1]
    trusted = args[args.index("--pip-trusted-host") + 1]
    return PipSource(find_links=find_links, trusted_hosts=(trusted,))


def cli_deploy(args: Sequence[str]) -> tuple[subprocess.CompletedProcess[str], dict[str, object], float]:
    """`synthdet deploy ARGS` (ARGS with --json) as a user runs it; it must succeed.
    (the process, its --json line, the seconds it took)"""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "synthdet.cli", "deploy", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"deploy failed:\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    return proc, json.loads(proc.stdout.strip().splitlines()[-1]), elapsed


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
    target = SshTarget(info.host, info.user, Path(info.key), port=info.port, known_hosts=known_hosts)
    options = DeployOptions(pip=wheelhouse_pip(info))
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


def _poll(what: str, attempt: Callable[[], object], timeout_s: float, every_s: float) -> float:
    """Call `attempt` until it returns without raising; seconds it took."""
    started = time.monotonic()
    try:
        retry(attempt, timeout_s=timeout_s, every_s=every_s)
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


# Where a deploy could leave something behind: the whole system, less the logins' homes and the
# memory-backed /run and /tmp (gone at the next boot).
TREE_ROOTS = ("/etc", "/opt", "/srv", "/usr", "/var")
# What changes on any running host, deploy or not: the journal (a login's first session adds a
# journal file of its own) and systemd's private temporary folders of running services. Measured:
# before a deploy and after its undeploy, these are the only differences on a test host.
VOLATILE = ("/var/log/journal", "/var/tmp/systemd-private-*")


def host_tree(info: th.TestHostInfo) -> set[str]:
    """Every path under TREE_ROOTS in the guest, VOLATILE ones left out."""
    prune = " -o ".join(f"-path {shlex.quote(pattern)}" for pattern in VOLATILE)
    roots = " ".join(TREE_ROOTS)
    out = guest(info, f"find {roots} -xdev \\( {prune} \\) -prune -o -print 2>/dev/null || true", timeout=300)
    return set(out.splitlines())
