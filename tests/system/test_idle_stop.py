"""Idle stop on a real systemd host: it powers itself off after N minutes nobody used it.

One test host, deployed once with a 2-minute idle stop, shared by the tests of this
module in file order: what moves the clock (app POSTs and viewer frames; not health
checks, the status, the viewer page or a wrong secret), a reboot in the middle that
keeps the clock under the boot's 10-minute floor (also for a machine idle for an hour,
as after a stop nobody noted), the power-off itself (the nspawn guest stops, like a VM),
a power-on that gets a fresh window (what `synthdet wake` relies on) and sees its short
SSH login in the journal, and a deploy with idle stop off that removes it all and leaves
the host running.

Idle stop counts logins as use, so after the deploy the guest is only touched
through `th.guest_exec` (nsenter, no login), and time is moved by setting the clock's
file times rather than by waiting, except for the one wait for the power-off itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from bootstrap import deploy as deploy_lib
from bootstrap.api import DeployOptions, DeployResult, SshTarget
from bootstrap.steps.idle_stop import ACTIVITY_LOG, IDLE_DIR, STATUS_FILE
from serving.contract import APP_CONTENT_TYPE, make_test_jpeg, post_image
from serving.endpoint import health_url, idle_status_url
from serving.models import ModelSpec
from serving.polling import poll
from synthdet.wake import Endpoint, read_idle_status, tls_for, wait_answering
from tests.support import testhost as th
from tests.support.browser import chromium, require_chromium, wait_for, write_y4m
from tests.support.deployment import require_test_hosts, wheelhouse_pip
from tests.support.testhost.common import STATE_ROOT

pytestmark = pytest.mark.system

MINUTES = 2
# The timer checks every minute on the minute: the power-off comes at most a minute after
# the idle minutes are up (plus the guest's shutdown).
TICK_S = 60
# Every boot runs at least this long (the script's BOOT_GRACE_S).
BOOT_FLOOR_S = 600


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass
class IdleHost:
    name: str
    info: th.TestHostInfo
    target: SshTarget
    options: DeployOptions
    checkpoint: Path
    result: DeployResult

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.result.endpoint)

    def sh(self, cmd: str) -> str:
        """Root in the guest, without an SSH session."""
        rc, out, err = th.guest_exec(self.name, cmd)
        assert rc == 0, f"{cmd!r} failed in the guest ({rc}): {err or out}"
        return out

    def requests_logged(self) -> int:
        return int(self.sh(f"cat {ACTIVITY_LOG} 2>/dev/null | wc -l").strip())

    def check_now(self) -> dict[str, object]:
        """Run the idle check as the timer would; the status it wrote."""
        self.sh("systemctl start synthdet-idle-check.service")
        return dict(json.loads(self.sh(f"cat {STATUS_FILE}")))

    def used_ago(self, seconds: int) -> None:
        """Move the clock: the last use (request, window, login) `seconds` ago."""
        files = " ".join(f"{IDLE_DIR}/{f}" for f in ("requests.log", "window", "login"))
        self.sh(f"touch -d @$(( $(date +%s) - {seconds} )) {files}")

    def deploy(self, minutes: int) -> DeployResult:
        spec = ModelSpec("synthdet", self.checkpoint)
        return deploy_lib.deploy(self.target, [spec], replace(self.options, idle_stop_minutes=minutes))


@pytest.fixture(scope="module")
def idle_host(unity_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdleHost]:
    require_test_hosts()
    name = f"sdi-{os.getpid()}"
    info = th.up(name)
    try:
        known_hosts = tmp_path_factory.mktemp("idle-host") / "known_hosts"
        target = SshTarget(info.host, info.user, Path(info.key), port=info.port, known_hosts=known_hosts)
        options = DeployOptions(pip=wheelhouse_pip(info))
        started = time.monotonic()
        first = deploy_lib.deploy(
            target, [ModelSpec("synthdet", unity_checkpoint)], replace(options, idle_stop_minutes=MINUTES)
        )
        host = IdleHost(name, info, target, options, unity_checkpoint, first)
        print(f"idle host: deployed with a {MINUTES}-minute idle stop in {time.monotonic() - started:.0f} s")
        yield host
    finally:
        th.down(name)


def test_the_deploy_installs_the_clock_and_serves_its_status(idle_host: IdleHost) -> None:
    assert [name for name, _ in idle_host.result.steps].count("idle-stop") == 1
    assert idle_host.sh(
        "systemctl is-active synthdet-idle-check.timer synthdet-idle-boot.service"
    ).split() == [
        "active",
        "active",
    ]
    idle_host.check_now()  # (the deploy's own check ran before its smoke request)
    endpoint = idle_host.endpoint
    status = read_idle_status(endpoint, tls_for(endpoint, idle_host.result.cert_sha256))
    assert status is not None and status.idle_stop_minutes == MINUTES
    # The deploy's own smoke request (through nginx, after the idle step) was the last use.
    assert status.last_request_at is not None and status.idle_minutes < 1


def test_app_posts_and_viewer_frames_count_nothing_else_does(idle_host: IdleHost, tmp_path: Path) -> None:
    endpoint = idle_host.endpoint
    before = idle_host.requests_logged()
    with httpx.Client(verify=False, timeout=30) as client:
        assert client.get(health_url(endpoint.base, endpoint.secret)).status_code == 200
        assert client.get(idle_status_url(endpoint.base, endpoint.secret)).status_code == 200
        assert client.get(endpoint.url).status_code == 200  # the viewer page itself
        wrong = endpoint.url.replace(endpoint.secret, "x" * len(endpoint.secret))
        refused = client.post(
            wrong, content=make_test_jpeg(320, 240), headers={"Content-Type": APP_CONTENT_TYPE}
        )
        assert refused.status_code == 404
        assert client.get(f"{endpoint.base}/").status_code == 404
    assert idle_host.requests_logged() == before

    assert post_image(endpoint.url, make_test_jpeg(640, 480), timeout_s=60).status_code == 200
    assert idle_host.requests_logged() == before + 1

    require_chromium()
    camera = write_y4m(tmp_path / "camera.y4m", frames=6, size=(640, 480))
    with chromium(tmp_path, camera=camera) as driver:
        driver.get(endpoint.url)
        wait_for(driver, "document.getElementById('rtt').textContent.endsWith(' ms')", timeout_s=180)
    frames = idle_host.requests_logged() - (before + 1)
    assert frames >= 1, "the viewer's frames did not move the clock"
    print(f"viewer: {frames} frame(s) counted")


def test_a_reboot_keeps_the_clock_under_the_boots_floor_then_the_host_powers_itself_off(
    idle_host: IdleHost,
) -> None:
    # Used 75 s ago; the reboot must not turn that into "just used" (nor open a new window).
    idle_host.used_ago(75)
    window = int(idle_host.sh(f"stat -c %Y {IDLE_DIR}/window"))
    boots = int((STATE_ROOT / idle_host.name / "boots").read_text())
    rebooting = int(time.time())
    th.guest_exec(idle_host.name, "systemctl reboot")
    rebooted, _ = poll(
        lambda: int((STATE_ROOT / idle_host.name / "boots").read_text()),
        lambda n: n > boots,
        timeout_s=120,
        every_s=0.2,
    )
    assert rebooted
    up, _ = poll(
        lambda: th.guest_exec(idle_host.name, "systemctl is-system-running")[1].strip(),
        lambda state: state in ("running", "degraded"),
        timeout_s=120,
        every_s=0.5,
    )
    assert up
    assert int(idle_host.sh(f"stat -c %Y {IDLE_DIR}/window")) == window
    # The boot put its floor under the stop time (grace: this boot's start), nothing more.
    grace = int(idle_host.sh(f"stat -c %Y {IDLE_DIR}/grace"))
    assert grace >= rebooting
    status = idle_host.check_now()
    assert 75 <= int(str(status["idle_seconds"])) < MINUTES * 60, status
    assert status["stops_at"] == iso(grace + BOOT_FLOOR_S), status

    # Idle for an hour at the boot (as after a forced stop, a crash: no power-off noted), the
    # first checks still leave it running: the model could not even have loaded yet.
    idle_host.used_ago(3600)
    status = idle_host.check_now()
    assert int(str(status["idle_seconds"])) >= 3600 and status["stops_at"] == iso(grace + BOOT_FLOOR_S)
    assert idle_host.sh(f"test -e {IDLE_DIR}/last-stop && echo stopped || echo not").strip() == "not"
    assert th.is_running(idle_host.name)

    # The boot 10 minutes past, last used 75 s ago: from here the clock alone decides.
    idle_host.used_ago(75)
    idle_host.sh(f"touch -d @$(( $(date +%s) - {BOOT_FLOOR_S} )) {IDLE_DIR}/grace")
    status = idle_host.check_now()
    idle_s = int(str(status["idle_seconds"]))
    assert 75 <= idle_s < MINUTES * 60, status
    assert th.is_running(idle_host.name)

    # No request from here on: the host powers off at the first check past the minutes.
    waited = time.monotonic()
    budget = MINUTES * 60 - idle_s + TICK_S + 60
    stopped, _ = poll(lambda: th.is_running(idle_host.name), lambda up: not up, timeout_s=budget, every_s=1)
    assert stopped, f"still running {budget} s after it was {idle_s} s idle"
    waited_s = time.monotonic() - waited
    print(f"powered off {waited_s:.0f} s after the reboot's check ({idle_s} s idle then)")
    # Not before the minutes were up, and at the first check after (plus the shutdown).
    assert MINUTES * 60 <= idle_s + waited_s <= MINUTES * 60 + TICK_S + 45
    # The one line saying why, on the console (which the clouds keep for a stopped VM).
    console = (STATE_ROOT / idle_host.name / "console.log").read_text(errors="replace")
    assert console.count("synthdet idle stop: powering off: no prediction request") == 1


def test_powered_on_again_it_gets_a_fresh_window_and_its_endpoint_answers(idle_host: IdleHost) -> None:
    started = time.time()
    th.power_on(idle_host.name)
    # The first boot after a power-off opened a new window (else it would stop at once).
    assert int(idle_host.sh(f"stat -c %Y {IDLE_DIR}/window")) >= int(started) - 1
    assert idle_host.sh(f"test -e {IDLE_DIR}/powered-off && echo left || echo gone").strip() == "gone"
    journal = idle_host.sh("journalctl -b -1 -t synthdet-idle-stop --no-pager -o cat")
    assert journal.count("powering off: no prediction request, login or deploy for") == 1
    # What `synthdet wake` does once the VM runs: health and one app request, TLS pinned.
    endpoint = idle_host.endpoint
    result, verify = wait_answering(endpoint, idle_host.result.cert_sha256, timeout_s=300, say=print)
    assert result.status == 200
    status = read_idle_status(endpoint, verify)
    assert status is not None and status.last_idle_stop_at is not None
    status = idle_host.check_now()
    assert status["idle_seconds"] in range(0, 30)
    # power_on's own SSH login (`ssh true`, over long before the next check) counted: the
    # check found it in the journal.
    login = status["last_login_at"]
    assert isinstance(login, str) and login >= iso(int(started)), status
    assert th.is_running(idle_host.name)


def test_a_deploy_with_idle_stop_off_removes_it_and_the_host_keeps_running(idle_host: IdleHost) -> None:
    result = idle_host.deploy(0)
    assert ("idle-stop", True) in result.steps
    assert idle_host.sh("systemctl list-unit-files 'synthdet-idle*' --no-legend | wc -l").strip() == "0"
    assert idle_host.sh(f"test -e {IDLE_DIR} && echo there || echo gone").strip() == "gone"
    assert "requests.log" not in idle_host.sh("cat /etc/nginx/sites-available/synthdet")
    endpoint = idle_host.endpoint
    assert read_idle_status(endpoint, tls_for(endpoint, result.cert_sha256)) is None  # 404
    # Nothing is left that could power it off, and it serves.
    assert post_image(endpoint.url, make_test_jpeg(320, 240), timeout_s=60).status_code == 200
    assert th.is_running(idle_host.name)
