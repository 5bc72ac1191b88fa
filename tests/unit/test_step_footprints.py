"""The whole plan against a fake Debian host: what it creates is what the steps declare.

Every step runs, in the planned order, against `FakeDebianHost` (its "nginx" a real
HTTPS server for the health check). What the commands and placed files create on the
host is read back (`created_by`) and must be covered by the union of the steps'
footprints, which is what undeploy removes: a step that starts creating a file,
directory, account, unit or package it does not declare fails here.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bootstrap.deploy import execute, undeploy_script
from bootstrap.steps import ORDER
from bootstrap.steps.base import STATE_FILE, HostState, Run, ensure_file
from bootstrap.steps.layout import Layout
from bootstrap.steps.step import Done, Footprint, Step
from tests.support.fake_host import Created, FakeDebianHost, deploy_run, run_plan


@pytest.fixture
def host() -> Iterator[FakeDebianHost]:
    fake = FakeDebianHost(dpkg_installed=("nginx", "python3-venv"))  # nftables is missing: apt
    try:
        yield fake
    finally:
        fake.close()


def uncovered(created: Created, steps: Sequence[Step], state: HostState) -> list[str]:
    """What was created that no step's footprint removes (empty: undeploy takes it all)."""
    prints = [step.footprint for step in steps]
    trees = [tree for fp in prints for tree in fp.trees]
    patterns = [pattern for fp in prints for pattern in (*fp.files, *fp.shared_dirs)]

    def covered(path: str) -> bool:
        return any(path == t or path.startswith(t + "/") for t in trees) or any(
            fnmatch.fnmatchcase(path, pattern) for pattern in patterns
        )

    missing = [f"path {path}" for path in sorted(created.paths) if not covered(path)]
    declared_accounts = {name for fp in prints for name in fp.accounts}
    missing += [f"account {name}" for name in sorted(created.accounts - declared_accounts)]
    missing += [
        f"account {name} (not recorded)" for name in sorted(created.accounts - set(state.created_users))
    ]
    declared_units = {unit for fp in prints for unit in fp.units}
    missing += [f"unit {unit}" for unit in sorted(created.units - declared_units)]
    if not any(fp.apt_packages for fp in prints):
        missing += [f"package {name}" for name in sorted(created.packages)]
    missing += [
        f"package {name} (not recorded)" for name in sorted(created.packages - set(state.apt_installed))
    ]
    return missing


def test_everything_the_plan_creates_is_declared_and_a_rerun_creates_nothing(
    host: FakeDebianHost, tmp_path: Path
) -> None:
    run = deploy_run(host, tmp_path)
    state = HostState()
    created = run_plan(host, run, state)
    # It did create things (the check below can fail): files, the venv, an account,
    # units of its own, a package.
    assert {"/etc/synthdet/url_secret", "/etc/nginx/sites-available/synthdet"} <= created.paths
    assert any(path.startswith("/opt/synthdet/venv-") for path in created.paths)
    assert created.accounts == {"synthdet-svc"}
    assert created.units == {
        "synthdet-firewall.service",
        "synthdet-firewall-guard.service",
        "synthdet-firewall-check.timer",
        "synthdet-torchserve.service",
    }
    assert created.packages == {"nftables"}
    assert uncovered(created, ORDER, state) == []
    # The record on the host names what undeploy must know.
    recorded = json.loads(host.text(STATE_FILE))
    assert recorded["created_users"] == ["synthdet-svc"] and recorded["apt_installed"] == ["nftables"]
    assert recorded["removed_default_site"] is True

    # A rerun changes nothing: no file rewritten, no directory, account, venv or package added.
    host.commands.clear()
    files, dirs = {path: f.data for path, f in host.files.items()}, set(host.made_dirs)
    _, reports = execute(run, HostState.from_json(host.text(STATE_FILE)))
    assert [r.name for r in reports if r.changed] == []
    assert {path: f.data for path, f in host.files.items()} == files and host.made_dirs == dirs
    assert not host.ran(r"^useradd |apt-get| -m venv |systemctl restart")


@dataclass(frozen=True)
class Cron:
    path: str


def test_a_step_that_creates_an_undeclared_file_is_caught(host: FakeDebianHost, tmp_path: Path) -> None:
    def apply(run: Run, layout: Layout) -> Done[Cron]:
        path = "/etc/cron.d/synthdet-rotate"
        return Done(ensure_file(run, path, "@daily root true\n"), "", Cron(path))

    sneaky = Step("rotate", apply)
    steps = (*ORDER, sneaky)
    state = HostState()
    created = run_plan(host, deploy_run(host, tmp_path), state, steps)
    assert uncovered(created, steps, state) == ["path /etc/cron.d/synthdet-rotate"]
    # Declared, it is covered, and undeploy removes it.
    declared = replace(sneaky, footprint=Footprint(files=("/etc/cron.d/synthdet-rotate",)))
    assert uncovered(created, (*ORDER, declared), state) == []
    assert "/etc/cron.d/synthdet-rotate" in undeploy_script(state, steps=(*ORDER, declared))


def test_undeploy_is_the_union_of_the_footprints_later_steps_first() -> None:
    state = HostState(apt_installed=["nftables"], removed_default_site=True, created_users=["synthdet-svc"])
    lines = undeploy_script(state).splitlines()
    # TorchServe stops before its firewall, and what would load the table again before the
    # table goes; units go before their files; the site is gone before nginx reloads;
    # directories after that; accounts, then packages, last.
    firewall_units = [
        "synthdet-firewall-check.timer",
        "synthdet-firewall-check.service",
        "synthdet-firewall-guard.service",
        "synthdet-firewall.service",
    ]
    # The certificate's timer and the service it starts (the last step's) go first.
    cert_units = ["synthdet-cert.timer", "synthdet-cert.service"]
    assert lines[:2] == [f"systemctl disable --now {unit} 2>/dev/null || true" for unit in cert_units]
    # Then idle stop's timer, before the check it starts, and its boot/shutdown hook.
    idle_units = ["synthdet-idle-check.timer", "synthdet-idle-check.service", "synthdet-idle-boot.service"]
    assert lines[2:5] == [f"systemctl disable --now {unit} 2>/dev/null || true" for unit in idle_units]
    lines = lines[5:]
    assert lines[:6] == [
        "systemctl disable --now synthdet-torchserve.service 2>/dev/null || true",
        *(f"systemctl disable --now {unit} 2>/dev/null || true" for unit in firewall_units),
        "nft delete table inet synthdet 2>/dev/null || true",
    ]
    assert lines[6] == (
        "rm -f /etc/systemd/system/synthdet-cert.service /etc/systemd/system/synthdet-cert.timer "
        "/etc/nginx/sites-enabled/synthdet /etc/nginx/sites-available/synthdet "
        "/etc/systemd/system/nginx.service.d/synthdet.conf "
        "/etc/nginx/modules-enabled/60-synthdet-stream.conf /var/log/nginx/synthdet.access.log* "
        "/var/log/nginx/synthdet.error.log* /etc/systemd/system/synthdet-torchserve.service "
        "/etc/systemd/system/synthdet-firewall.service /etc/systemd/system/synthdet-firewall-guard.service "
        "/etc/systemd/system/synthdet-firewall-check.service "
        "/etc/systemd/system/synthdet-firewall-check.timer"
    ).replace(
        " /etc/systemd/system/synthdet-torchserve.service",
        " /etc/systemd/system/synthdet-idle-check.timer /etc/systemd/system/synthdet-idle-check.service "
        "/etc/systemd/system/synthdet-idle-boot.service /etc/systemd/system/synthdet-torchserve.service",
    )
    assert lines[7:9] == [
        "systemctl daemon-reload",
        f"systemctl reset-failed {' '.join(cert_units)} {' '.join(idle_units)} synthdet-torchserve.service "
        f"{' '.join(firewall_units)} 2>/dev/null || true",
    ]
    assert lines[9].startswith("[ -e /etc/nginx/sites-available/default ] && ln -sfn ")
    assert lines[10].startswith("if systemctl is-active --quiet nginx; then nginx -t")
    assert lines[11] == (
        "rm -rf /var/lib/synthdet-idle /run/synthdet-firewall /opt/synthdet /var/lib/synthdet "
        "/var/log/synthdet /etc/synthdet"
    )
    assert (
        lines[12]
        == "rmdir --ignore-fail-on-non-empty /etc/systemd/system/nginx.service.d 2>/dev/null || true"
    )
    assert "userdel synthdet-svc" in lines[13]
    assert "purge -y -q nftables" in lines[14] and len(lines) == 15
