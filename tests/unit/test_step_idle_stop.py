"""The idle-stop step on its own, and what it puts in nginx's site, against a fake host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bootstrap.api import DeployOptions
from bootstrap.deploy import undeploy_script
from bootstrap.steps import ORDER, idle_stop, nginx
from bootstrap.steps.base import DeployError, HostState, Run
from bootstrap.steps.layout import Layout
from bootstrap.steps.step import Done
from serving.models import ModelSpec
from tests.support.fake_host import SECRET, FakeDebianHost, deploy_run, make_run, run_plan
from tests.unit.test_step_footprints import uncovered

LAYOUT = Layout("synthdet-svc")
UNIT_DIR = "/etc/systemd/system"


@pytest.fixture
def host() -> Iterator[FakeDebianHost]:
    fake = FakeDebianHost()
    yield fake
    fake.close()


def deploy(host: FakeDebianHost, minutes: int) -> Done[idle_stop.IdleStop]:
    run = make_run(host=host, options=DeployOptions(idle_stop_minutes=minutes))
    return idle_stop.apply(run, LAYOUT)


def test_off_by_default_installs_nothing_and_asks_one_question(host: FakeDebianHost) -> None:
    done = deploy(host, 0)
    assert done.output == idle_stop.IdleStop(0) and not done.changed
    (probe,) = host.commands
    assert probe.startswith("if [ -e /etc/synthdet/idle-stop.sh ]")
    assert not any(path.startswith(UNIT_DIR + "/synthdet-idle") for path in host.files)


def test_on_it_installs_the_script_the_timer_and_the_boot_hook(host: FakeDebianHost) -> None:
    done = deploy(host, 30)
    assert done.changed and done.output == idle_stop.IdleStop(30)
    assert "powers off after 30 minutes without a prediction request" in done.detail
    script = host.files["/etc/synthdet/idle-stop.sh"]
    assert (script.owner, script.mode) == ("root:root", "700")
    check = host.text(f"{UNIT_DIR}/synthdet-idle-check.service")
    assert "ExecStart=/etc/synthdet/idle-stop.sh check /var/lib/synthdet-idle 30\n" in check
    assert "StandardOutput=journal+console" in check
    boot = host.text(f"{UNIT_DIR}/synthdet-idle-boot.service")
    assert "ExecStart=/etc/synthdet/idle-stop.sh boot /var/lib/synthdet-idle 30" in boot
    assert "ExecStop=/etc/synthdet/idle-stop.sh shutdown /var/lib/synthdet-idle 30" in boot
    timer = host.text(f"{UNIT_DIR}/synthdet-idle-check.timer")
    assert "OnCalendar=*:*:00" in timer and "AccuracySec=1s" in timer
    # The deploy opens a window, enables the hook and the timer, and writes the status at once.
    assert host.ran(r"^install -d -m 755 /var/lib/synthdet-idle && /etc/synthdet/idle-stop\.sh open ")
    assert {"synthdet-idle-boot.service", "synthdet-idle-check.timer"} <= host.enabled
    assert host.ran(r"^systemctl start synthdet-idle-check\.service$")


def test_a_rerun_only_opens_a_new_window(host: FakeDebianHost) -> None:
    deploy(host, 30)
    host.commands.clear()
    done = deploy(host, 30)
    assert not done.changed
    assert host.ran(r"idle-stop\.sh open ") and not host.ran(r"^systemctl (restart|daemon-reload)")


def test_other_minutes_rewrite_the_check_and_restart_the_timer(host: FakeDebianHost) -> None:
    deploy(host, 30)
    host.commands.clear()
    done = deploy(host, 5)
    assert done.changed
    assert " check /var/lib/synthdet-idle 5\n" in host.text(f"{UNIT_DIR}/synthdet-idle-check.service")
    assert host.ran(r"^systemctl daemon-reload$") and host.ran(
        r"^systemctl restart synthdet-idle-check\.timer$"
    )


def test_off_again_removes_the_units_and_leaves_the_clock_folder_to_the_nginx_step(
    host: FakeDebianHost,
) -> None:
    deploy(host, 30)
    host.commands.clear()
    done = deploy(host, 0)
    assert done.changed and "removed" in done.detail
    (removal,) = host.commands
    for unit in ("synthdet-idle-check.timer", "synthdet-idle-check.service", "synthdet-idle-boot.service"):
        assert f"{UNIT_DIR}/{unit}" in removal and unit in removal.split("disable --now")[1]
    assert "/etc/synthdet/idle-stop.sh" in removal
    # The live nginx site still logs into the folder until the nginx step rewrote it.
    assert "rm -rf" not in removal and "/var/lib/synthdet-idle" in host.made_dirs
    assert done.output == idle_stop.IdleStop(0, old_clock=True)
    assert not any(path.startswith(UNIT_DIR + "/synthdet-idle") for path in host.files)


@pytest.mark.parametrize("minutes", [-1, 1441])
def test_minutes_out_of_range_are_refused(minutes: int) -> None:
    with pytest.raises(ValueError, match="idle_stop_minutes"):
        DeployOptions(idle_stop_minutes=minutes)


def site(minutes: int, models: tuple[str, ...] = ("synthdet",)) -> str:
    specs = tuple(ModelSpec(name, Path("a.pth")) for name in models)
    run = make_run(models=specs, options=DeployOptions(idle_stop_minutes=minutes))
    return nginx.render_site(run, SECRET)


def location(text: str, path: str) -> str:
    match = re.search(rf"\n    location = {re.escape(path)} \{{\n(.*?)\n    \}}\n", text, re.S)
    assert match, f"no location {path}"
    return match.group(1)


def test_only_the_prediction_locations_move_the_clock() -> None:
    text = site(30, ("synthdet", "cereal"))
    activity = "access_log /var/lib/synthdet-idle/requests.log synthdet_activity;"
    assert text.count(activity) == 2
    for name in ("synthdet", "cereal"):
        body = location(text, f"/{SECRET}/predictions/{name}")
        # Its own access_log replaces the server's: the server's is named again.
        assert activity in body and "access_log /var/log/nginx/synthdet.access.log synthdet;" in body
    assert activity not in location(text, f"/{SECRET}/ping")
    assert "log_format synthdet_activity '$msec';" in text


def test_the_status_is_served_under_the_secret_and_is_not_activity() -> None:
    body = location(site(30), f"/{SECRET}/idle-stop")
    assert "alias /var/lib/synthdet-idle/status.json;" in body
    assert "limit_except GET { deny all; }" in body and "requests.log" not in body


def test_off_the_site_has_no_clock_and_no_status() -> None:
    text = site(0)
    assert "requests.log" not in text and "/idle-stop" not in text
    assert "access_log" not in location(text, f"/{SECRET}/predictions/synthdet")


def test_the_nginx_step_runs_after_the_clock_folder_exists() -> None:
    names = [step.name for step in ORDER]
    assert names.index("idle-stop") < names.index("nginx")


def test_the_whole_plan_with_idle_stop_creates_only_what_its_steps_declare(tmp_path: Path) -> None:
    host = FakeDebianHost(dpkg_installed=("nginx", "python3-venv"))
    try:
        run = deploy_run(host, tmp_path)
        run = replace(run, options=replace(run.options, idle_stop_minutes=30))
        state = HostState()
        created = run_plan(host, run, state)
        assert {"synthdet-idle-boot.service", "synthdet-idle-check.timer"} <= created.units
        assert "/var/lib/synthdet-idle" in created.paths and "/etc/synthdet/idle-stop.sh" in created.paths
        assert uncovered(created, ORDER, state) == []
        script = undeploy_script(state)
        assert "systemctl disable --now synthdet-idle-check.timer" in script
        assert "/var/lib/synthdet-idle" in script.split("rm -rf ")[1]
    finally:
        host.close()


def turn_off_after_on(host: FakeDebianHost, tmp_path: Path) -> tuple[Run, HostState]:
    """The whole plan with idle stop on, then the run that turns it off."""
    run = deploy_run(host, tmp_path)
    state = HostState()
    run_plan(host, replace(run, options=replace(run.options, idle_stop_minutes=30)), state)
    assert "/var/lib/synthdet-idle" in host.made_dirs
    assert "/var/lib/synthdet-idle/requests.log" in host.text("/etc/nginx/sites-available/synthdet")
    host.commands.clear()
    return run, state


def test_turned_off_the_clock_folder_goes_once_nginx_runs_a_site_without_it(tmp_path: Path) -> None:
    host = FakeDebianHost(dpkg_installed=("nginx", "python3-venv"))
    try:
        run, state = turn_off_after_on(host, tmp_path)
        run_plan(host, run, state)
        assert "requests.log" not in host.text("/etc/nginx/sites-available/synthdet")
        assert "/var/lib/synthdet-idle" not in host.made_dirs
        removed = host.commands.index("rm -rf /var/lib/synthdet-idle")
        assert removed > host.commands.index("systemctl reload nginx")
        # A rerun has nothing left to remove.
        host.commands.clear()
        run_plan(host, run, state)
        assert not host.ran(r"rm -rf /var/lib/synthdet-idle")
    finally:
        host.close()


def test_a_failing_nginx_step_after_turning_off_leaves_the_folder_its_live_site_logs_to(
    tmp_path: Path,
) -> None:
    # Else the next start of nginx (a reboot, its Restart=always) reads the old site, finds no
    # folder for its log and does not start: the endpoint would be down.
    host = FakeDebianHost(dpkg_installed=("nginx", "python3-venv"))
    try:
        run, state = turn_off_after_on(host, tmp_path)
        host.on(r"^nginx -t$", (1, "", "nginx: [emerg] something else is wrong"))
        with pytest.raises(DeployError, match="nginx rejects its configuration"):
            run_plan(host, run, state)
        assert "/var/lib/synthdet-idle" in host.made_dirs
        assert not host.ran(r"rm -rf /var/lib/synthdet-idle")
        # Fixed, the next deploy finishes the job.
        host.on(r"^nginx -t$", (0, "", "nginx: configuration file /etc/nginx/nginx.conf test is successful"))
        run_plan(host, run, state)
        assert "/var/lib/synthdet-idle" not in host.made_dirs
    finally:
        host.close()
