"""What cloud VMs do to a deployed endpoint, and how it comes back.

Against the shared `deployed_host`, in file order: a TorchServe worker killed,
TorchServe killed, nginx killed, the host rebooted (each recovers by itself),
the disk filling up while a new model uploads and SSH dropping mid-deploy
(the last good model is served throughout; rerunning deploy converges).
Recovery times are printed and collected in `deployed_host.timings`.

(`test_deploy.py` already covers `kill -9` of the java frontend alone, a
connection dropped mid-upload and a corrupted upload.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from bootstrap import ssh as ssh_module
from bootstrap.runner import RunnerError, copy_stream
from bootstrap.ssh import Connection, SshError
from bootstrap.steps.base import (
    MANAGEMENT_PORT,
    MODEL_STORE,
    SERVICE_USER,
    TORCHSERVE_PORTS,
    UNIT_NAME,
    VAR_DIR,
    DeployError,
)
from bootstrap.steps.firewall import FIREWALL_CHECK_TIMER, FIREWALL_GUARD_UNIT, TABLE
from serving.contract import make_test_jpeg, smoke
from tests.support import testhost as th
from tests.support.deployment import (
    Deployment,
    guest,
    loaded_sha,
    served_sha,
    service_pids,
    torchserve_ports_as,
    wait_healthy,
    wait_serving,
    worker_pids,
)

pytestmark = pytest.mark.system


def _record(deployed: Deployment, what: str, seconds: float) -> None:
    deployed.timings[what] = seconds
    print(f"recovery: {what}: {seconds:.1f} s")


def _record_recovery(deployed: Deployment, what: str) -> None:
    """Right after a fault: seconds until /ping answers, then until a frame is served.

    The second includes one CPU inference (~3 s idle) and the worker's model load.
    """
    started = time.monotonic()
    _record(deployed, f"{what}: healthy", wait_healthy(deployed.health_url))
    wait_serving(deployed.endpoint)
    _record(deployed, f"{what}: serving", time.monotonic() - started)


def _fast_503_while_down(deployed: Deployment) -> None:
    """While TorchServe is down the app gets a quick JSON 503 with Retry-After, not a hang."""
    started = time.monotonic()
    with httpx.Client(verify=False, timeout=10) as client:
        response = client.post(deployed.endpoint, content=make_test_jpeg(320, 240))
    if response.status_code == 200:
        return  # it was back already
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == 503
    assert time.monotonic() - started < 1.0


def test_killed_worker_is_replaced_by_torchserve(deployed_host: Deployment) -> None:
    info = deployed_host.info
    smoke(deployed_host.endpoint, timeout_s=60)
    _, java = service_pids(info)
    [worker] = worker_pids(info)
    guest(info, f"kill -9 {worker}")
    _record_recovery(deployed_host, "worker kill -9")
    assert service_pids(info)[1] == java, "the frontend must survive a worker's death"
    assert worker_pids(info) != [worker]


def test_killed_torchserve_is_restarted_by_systemd(deployed_host: Deployment) -> None:
    info = deployed_host.info
    restarts = int(guest(info, f"systemctl show -p NRestarts --value {UNIT_NAME}"))
    # The whole service at once (frontend and workers), as the OOM killer might.
    guest(info, f"systemctl kill --signal=SIGKILL {UNIT_NAME}")
    _fast_503_while_down(deployed_host)
    _record_recovery(deployed_host, "TorchServe SIGKILL")
    assert int(guest(info, f"systemctl show -p NRestarts --value {UNIT_NAME}")) > restarts
    # The upstream errors above did not write the secret into nginx's error log.
    log = guest(info, "cat /var/log/nginx/synthdet.error.log 2>/dev/null || true")
    assert deployed_host.secret not in log


def test_killed_nginx_is_restarted_by_systemd(deployed_host: Deployment) -> None:
    info = deployed_host.info
    guest(info, "systemctl kill --signal=SIGKILL nginx")
    _record_recovery(deployed_host, "nginx SIGKILL")
    assert guest(info, "systemctl is-active nginx").strip() == "active"


def test_reboot_brings_everything_back(deployed_host: Deployment) -> None:
    sha = served_sha(deployed_host.info)
    started = time.monotonic()
    th.reboot(deployed_host.info.name)
    wait_healthy(deployed_host.health_url)
    _record(deployed_host, "reboot: healthy (from `reboot`)", time.monotonic() - started)
    wait_serving(deployed_host.endpoint)
    _record(deployed_host, "reboot: serving (from `reboot`)", time.monotonic() - started)
    assert served_sha(deployed_host.info) == sha
    # The guard on TorchServe's ports came back with it.
    assert torchserve_ports_as(deployed_host.info, "nobody") == dict.fromkeys(TORCHSERVE_PORTS, "refused")


def test_firewall_rules_flushed_by_somebody_come_back_with_the_next_deploy(deployed_host: Deployment) -> None:
    info = deployed_host.info
    # The table comes back by itself (tests/system/test_local_attacker.py); with what brings it
    # back stopped too, what `nft flush ruleset` does to it stays done until the next deploy.
    # The firewall unit still says "active" (RemainAfterExit).
    guest(info, f"systemctl stop {FIREWALL_GUARD_UNIT} {FIREWALL_CHECK_TIMER}")  # its held copy goes too
    guest(info, f"nft delete table inet {TABLE}")
    assert torchserve_ports_as(info, "nobody") == dict.fromkeys(TORCHSERVE_PORTS, "open")
    result, _ = deployed_host.redeploy()
    assert ("firewall", True) in result.steps
    assert torchserve_ports_as(info, "nobody") == dict.fromkeys(TORCHSERVE_PORTS, "refused")
    for unit in (FIREWALL_GUARD_UNIT, FIREWALL_CHECK_TIMER):
        assert guest(info, f"systemctl is-active {unit}").strip() == "active", unit
    smoke(deployed_host.endpoint, timeout_s=60)


def _small_model_store(info: th.TestHostInfo, spare_mib: int) -> None:
    """Put the model store on its own tmpfs with `spare_mib` free after the current archives.

    Only the guest is affected (the guest's real disk is the build machine's).
    The archives are copied in, so TorchServe keeps serving and reloading them.
    """
    used = int(guest(info, f"du -sm {MODEL_STORE} | cut -f1"))
    guest(
        info,
        f"set -e; mkdir -p {VAR_DIR}/keep && cp -a {MODEL_STORE}/. {VAR_DIR}/keep/ && "
        f"mount -t tmpfs -o size={used + spare_mib}m,mode=750 synthdet-small {MODEL_STORE} && "
        f"chown root:{SERVICE_USER} {MODEL_STORE} && cp -a {VAR_DIR}/keep/. {MODEL_STORE}/ && "
        f"rm -rf {VAR_DIR}/keep",
    )


def _normal_model_store(info: th.TestHostInfo) -> None:
    """Back to the real disk, keeping whatever archives the store holds now."""
    guest(
        info,
        f"set -e; mkdir -p {VAR_DIR}/keep && cp -a {MODEL_STORE}/. {VAR_DIR}/keep/ && "
        f"umount {MODEL_STORE} && rm -f {MODEL_STORE}/*.mar && cp -a {VAR_DIR}/keep/. {MODEL_STORE}/ && "
        f"rm -rf {VAR_DIR}/keep",
    )


def test_disk_full_during_a_model_upload_keeps_the_last_good_model(
    deployed_host: Deployment, other_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = deployed_host.info
    good = served_sha(info)
    mar_mib = int(guest(info, f"du -m {MODEL_STORE}/synthdet.mar | cut -f1"))
    # Room for the new archive plus the spare the deploy wants: the upload starts...
    _small_model_store(info, spare_mib=mar_mib + 80)
    try:
        filled = threading.Event()

        def filling_copy(source, write, on_sent=None):  # type: ignore[no-untyped-def]
            def fill(sent: int) -> None:
                # ...and halfway through, something else on the host fills the disk.
                if sent > mar_mib * 2**19 and not filled.is_set():
                    filled.set()
                    th.ssh_exec(info, f"dd if=/dev/zero of={MODEL_STORE}/.filler bs=1M 2>/dev/null; true")
                if on_sent:
                    on_sent(sent)

            return copy_stream(source, write, fill)

        monkeypatch.setattr(ssh_module, "copy_stream", filling_copy)
        with pytest.raises(RunnerError, match="free disk space"):
            deployed_host.redeploy(other_checkpoint)
        monkeypatch.setattr(ssh_module, "copy_stream", copy_stream)
        assert filled.is_set()
        assert served_sha(info) == good and loaded_sha(info) == good
        smoke(deployed_host.endpoint, timeout_s=60)

        # Rerun while the disk is still full: refused up front, with a clear message.
        with pytest.raises(DeployError, match="not enough disk space") as refused:
            deployed_host.redeploy(other_checkpoint)
        print(f"disk full: {refused.value}")
        assert guest(info, f"ls -A {MODEL_STORE}").split() == [".filler", "synthdet.mar"]  # no partials
        assert served_sha(info) == good
        smoke(deployed_host.endpoint, timeout_s=60)

        # Space freed: a rerun converges to the new model without restarting TorchServe.
        pids = service_pids(info)
        guest(info, f"rm -f {MODEL_STORE}/.filler")
        result, elapsed = deployed_host.redeploy(other_checkpoint)
        _record(deployed_host, "disk full: rerun after freeing space", elapsed)
        assert dict(result.steps)["upload-model"]
        new = served_sha(info)
        assert new != good and loaded_sha(info) == new
        assert service_pids(info) == pids
        smoke(result.endpoint, timeout_s=60)
    finally:
        _normal_model_store(info)


def test_ssh_dropped_during_the_model_reload_is_finished_by_the_host(
    deployed_host: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies while TorchServe swaps models: the host completes the swap."""
    info = deployed_host.info
    before = served_sha(info)
    real_run = Connection.run

    def dropping_run(self, cmd, **kwargs):  # type: ignore[no-untyped-def]
        if "synchronous=true" in cmd:  # the reload: cut the network a second in
            threading.Timer(1.0, self.client.get_transport().close).start()
        return real_run(self, cmd, **kwargs)

    monkeypatch.setattr(Connection, "run", dropping_run)
    started = time.monotonic()
    with pytest.raises(SshError):
        deployed_host.redeploy()  # back to the fixture's checkpoint
    monkeypatch.setattr(Connection, "run", real_run)
    wanted = served_sha(info)
    assert wanted != before
    # Without any rerun the host finishes the reload and serves the new model.
    deadline = time.monotonic() + 240
    while loaded_sha(info) != wanted or not _model_ready(info):
        assert time.monotonic() < deadline, "the reload was not finished on the host"
        time.sleep(1)
    wait_serving(deployed_host.endpoint)
    _record(deployed_host, "SSH dropped mid-reload: serving the new model", time.monotonic() - started)

    # A rerun converges (it reloads once more: the state file missed the first reload).
    result, elapsed = deployed_host.redeploy()
    _record(deployed_host, "SSH dropped mid-reload: rerun", elapsed)
    assert served_sha(info) == wanted
    smoke(result.endpoint, timeout_s=60)
    result, _ = deployed_host.redeploy()
    assert not result.changed, result.steps


def _model_ready(info: th.TestHostInfo) -> bool:
    rc, out, _ = th.ssh_exec(info, f"curl -sf http://127.0.0.1:{MANAGEMENT_PORT}/models/synthdet")
    return rc == 0 and '"READY"' in out
