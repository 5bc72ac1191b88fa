"""The firewall step on its own: the rules, the units that keep them in place, on a fake host.

What the guard script does when the table goes missing is in tests/unit/test_firewall_guard.py;
the real thing on a test host in tests/system/test_local_attacker.py.
"""

from __future__ import annotations

import pytest

from bootstrap.api import DeployOptions
from bootstrap.steps import firewall
from bootstrap.steps.base import DeployError, Run
from bootstrap.steps.layout import Layout
from bootstrap.steps.packages import SystemPackages
from bootstrap.steps.step import Done
from tests.support.fake_host import FakeRunner, make_run

NGINX_CONF = "user www-data;\nworker_processes auto;\n"
UNITS = "/etc/systemd/system"


def apply(run: Run) -> Done[firewall.Firewall]:
    return firewall.apply(run, SystemPackages(), Layout("synthdet-svc"))


def firewall_host() -> FakeRunner:
    host = FakeRunner().on(r"^command -v nft$", "/usr/sbin/nft\n").on(r"^id -u www-data$", "33\n")
    host.on(r"^systemctl (daemon-reload|restart|reload|start|is-enabled)").on(
        r"^systemctl is-active", (3, "inactive\n", "")
    )
    host.on(r"^nft list table inet synthdet$", (1, "", "Error: No such file or directory"))
    host.put("/etc/nginx/nginx.conf", NGINX_CONF)
    return host


def rules_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "reject" in line]


def test_only_root_reaches_torchserve_and_nginx_its_inference_port() -> None:
    rules = firewall.render_rules(33)
    assert rules.splitlines()[3:5] == ["table inet synthdet", "delete table inet synthdet"]  # atomic reload
    assert rules_of(rules) == [
        # 843/844: the site and the certificate responder behind the ACME splitter (nginx's).
        'oifname "lo" tcp dport { 843, 844, 18080 } meta skuid != { 0, 33 } counter reject with tcp reset',
        'oifname "lo" tcp dport { 7070, 7071, 18081, 18082 } meta skuid != 0 counter reject with tcp reset',
    ]


def test_a_replica_also_keeps_everyone_but_root_off_the_metadata_servers_http() -> None:
    assert rules_of(firewall.render_rules(33, guard_metadata=True))[2:] == [
        "ip daddr 169.254.169.254 tcp dport { 80, 443 } meta skuid != 0 counter reject with tcp reset",
        "ip6 daddr { fd00:ec2::254, fd20:ce::254 } tcp dport { 80, 443 } meta skuid != 0 "
        "counter reject with tcp reset",
    ]


def test_firewall_step_installs_rules_guard_and_units_then_is_a_no_op() -> None:
    host = firewall_host()
    run = make_run(host=host)
    done = apply(run)
    assert done.changed and done.output == firewall.Firewall("synthdet-firewall.service")
    rules = host.text("/etc/synthdet/nftables.conf")
    assert "meta skuid != { 0, 33 }" in rules and "169.254.169.254" not in rules  # not a replica
    assert host.files["/etc/synthdet/nftables.conf"].mode == "600"
    assert host.files["/etc/synthdet/firewall-guard.sh"].mode == "700"
    guard = host.text("/etc/synthdet/firewall-guard.sh")
    assert guard.startswith("#!/bin/sh\n") and "RULES=/etc/synthdet/nftables.conf" in guard
    unit = host.text(f"{UNITS}/synthdet-firewall.service").splitlines()
    for line in (
        "ExecStart=/etc/synthdet/firewall-guard.sh load",
        "ExecReload=/etc/synthdet/firewall-guard.sh load",
        "ExecStop=-nft delete table inet synthdet",
        "Before=network-pre.target synthdet-torchserve.service",
        "After=nftables.service",
        "ReloadPropagatedFrom=nftables.service",
    ):
        assert line in unit, line
    # A restart of nftables must not restart TorchServe (PartOf= would, through Requires=).
    assert not any(line.startswith("PartOf=") for line in unit)
    watcher = host.text(f"{UNITS}/synthdet-firewall-guard.service").splitlines()
    assert "ExecStart=/etc/synthdet/firewall-guard.sh watch" in watcher
    assert "BindsTo=synthdet-firewall.service" in watcher and "Restart=always" in watcher
    check = host.text(f"{UNITS}/synthdet-firewall-check.service").splitlines()
    assert "ExecStart=/etc/synthdet/firewall-guard.sh check" in check
    timer = host.text(f"{UNITS}/synthdet-firewall-check.timer").splitlines()
    assert "OnCalendar=*:*:00/30" in timer and "WantedBy=timers.target" in timer
    for unit_name in (
        "synthdet-firewall.service",
        "synthdet-firewall-guard.service",
        "synthdet-firewall-check.timer",
    ):
        assert host.ran(rf"systemctl enable --quiet {unit_name}$"), unit_name
    assert host.ran(r"^systemctl start synthdet-firewall.service$")
    assert host.ran(r"^systemctl restart synthdet-firewall-guard.service$")
    assert host.ran(r"^systemctl restart synthdet-firewall-check.timer$")

    # Rerun with everything active and the table loaded: nothing written, nothing (re)started.
    host.commands.clear()
    host.on(r"^systemctl is-active", "active\n").on(
        r"^nft list table inet synthdet$", "table inet synthdet {}\n"
    )
    assert not apply(run).changed
    assert not host.ran(r"restart|reload|start |mv -f|daemon-reload")

    # Somebody flushed the ruleset and nothing put it back yet: the rerun reloads the rules
    # (TorchServe, which requires the unit, keeps running: a restart would restart it).
    host.commands.clear()
    host.on(r"^nft list table inet synthdet$", (1, "", "Error: No such file or directory"))
    assert apply(run).changed
    assert host.ran(r"^systemctl reload synthdet-firewall.service$")
    assert not host.ran(r"^systemctl restart synthdet-firewall.service$")


def test_behind_a_load_balancer_the_rules_guard_the_metadata_server() -> None:
    host = firewall_host()
    apply(make_run(host=host, options=DeployOptions(balancer_cidrs=("130.211.0.0/22",))))
    assert "ip daddr 169.254.169.254 tcp dport { 80, 443 }" in host.text("/etc/synthdet/nftables.conf")


def test_undeploy_stops_what_loads_the_table_before_the_table() -> None:
    footprint = firewall.STEP.footprint
    assert footprint.units == (
        "synthdet-firewall-check.timer",
        "synthdet-firewall-check.service",
        "synthdet-firewall-guard.service",
        "synthdet-firewall.service",
    )
    assert set(footprint.files) == {f"{UNITS}/{unit}" for unit in footprint.units}
    assert footprint.nft_tables == ("synthdet",)


def test_firewall_step_says_what_is_missing() -> None:
    host = FakeRunner().on(r"^command -v nft$", (1, "", ""))
    with pytest.raises(DeployError, match="nftables"):
        apply(make_run(host=host))
    broken = firewall_host().on(r"^id -u www-data$", (1, "", "id: 'www-data': no such user"))
    with pytest.raises(DeployError, match="www-data"):
        apply(make_run(host=broken))
