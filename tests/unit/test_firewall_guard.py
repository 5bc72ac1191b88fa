"""The firewall guard script (load, check, watch) against stand-ins for `nft` and `systemctl`.

The script the deploy installs (rendered from bootstrap/templates/synthdet-firewall-guard.sh)
runs here under /bin/sh with `nft` and `systemctl` replaced by small scripts that keep the
"live" table and the units' states in files and log every call. On a real host the same
is checked in tests/system/test_local_attacker.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootstrap.steps import firewall

FAKE_NFT = """#!/bin/sh
echo "nft $*" >> "$FAKE/calls"
case "$*" in
    "-f "*) [ -e "$FAKE/load-fails" ] && exit 1; cp "$2" "$FAKE/table" ;;
    "--stateless list table inet synthdet") cat "$FAKE/table" 2>/dev/null || exit 1 ;;
    "list table inet synthdet_held") [ -e "$FAKE/held" ] ;;
    "monitor destroy") sleep 0.5; cat "$FAKE/events" ;;
    # Interactive: each line is a command; a table it creates lives as long as it runs.
    -i) while read -r line; do
            [ -e "$FAKE/no-owner" ] && { echo "Error: Operation not supported" >&2; continue; }
            echo "$line" > "$FAKE/held"
        done
        rm -f "$FAKE/held" ;;
    *) exit 2 ;;
esac
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE/calls"
case "$1" in
    is-active) [ -e "$FAKE/active-$3" ] ;;
    start|stop) ;;
    *) exit 2 ;;
esac
"""
RULES_TEXT = "table inet synthdet { the rules }\n"
TORCHSERVE = "synthdet-torchserve.service"


@dataclass
class Guard:
    root: Path
    script: Path

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.root / 'bin'}:/usr/bin:/bin",
            "FAKE": str(self.root),
            "SYNTHDET_FIREWALL_STATE": str(self.root / "state"),
        }
        return subprocess.run(["/bin/sh", str(self.script), command], env=env, capture_output=True, text=True)

    def calls(self) -> list[str]:
        path = self.root / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        path.unlink(missing_ok=True)
        return lines

    @property
    def table(self) -> Path:
        return self.root / "table"


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[Guard]:
    text = firewall.render_guard_script()
    rules = tmp_path / "nftables.conf"
    rules.write_text(RULES_TEXT)
    script = tmp_path / "firewall-guard.sh"
    held = tmp_path / "nftables-held.conf"
    held.write_text(firewall.render_held_rules(33))
    text = text.replace(f"RULES={firewall.RULES_FILE}", f"RULES={rules}")
    script.write_text(text.replace(f"HELD_RULES={firewall.HELD_RULES_FILE}", f"HELD_RULES={held}"))
    (tmp_path / "bin").mkdir()
    for name, body in (("nft", FAKE_NFT), ("systemctl", FAKE_SYSTEMCTL)):
        (tmp_path / "bin" / name).write_text(body)
        (tmp_path / "bin" / name).chmod(0o755)
    (tmp_path / "active-synthdet-firewall.service").touch()
    yield Guard(tmp_path, script)


def test_load_puts_the_table_in_and_remembers_it(guard: Guard) -> None:
    assert guard.run("load").returncode == 0
    assert guard.table.read_text() == RULES_TEXT
    assert (guard.root / "state" / "loaded").read_text() == RULES_TEXT


def test_an_intact_table_is_left_alone_silently(guard: Guard) -> None:
    guard.run("load")
    guard.calls()
    done = guard.run("check")
    assert done.returncode == 0 and done.stdout == ""
    assert not [
        call for call in guard.calls() if call.startswith("nft -f") or "start" in call or "stop" in call
    ]


@pytest.mark.parametrize("damage", ["removed", "changed"])
def test_a_removed_or_changed_table_is_put_back_with_one_line(guard: Guard, damage: str) -> None:
    guard.run("load")
    if damage == "removed":
        guard.table.unlink()
    else:
        guard.table.write_text("table inet synthdet { }\n")
    done = guard.run("check")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "the nftables table inet synthdet (TorchServe's port guard) was removed or changed: put it back"
    ]
    assert guard.table.read_text() == RULES_TEXT
    assert guard.run("check").stdout == ""  # and then it is intact


def test_torchserve_stops_while_the_table_cannot_be_put_back_and_starts_after(guard: Guard) -> None:
    guard.run("load")
    guard.table.unlink()
    (guard.root / "load-fails").touch()
    guard.calls()
    failed = guard.run("check")
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == [
        "the nftables table inet synthdet (TorchServe's port guard) is gone and cannot be put back: "
        f"stopping {TORCHSERVE} until it can"
    ]
    assert f"systemctl stop --no-block {TORCHSERVE}" in guard.calls()
    # Every later check stops it again (somebody may start it), saying so only once.
    again = guard.run("check")
    assert again.returncode == 1 and again.stdout == ""
    assert f"systemctl stop --no-block {TORCHSERVE}" in guard.calls()
    # The rules can be loaded again: the table is back, then TorchServe.
    (guard.root / "load-fails").unlink()
    back = guard.run("check")
    assert back.returncode == 0
    assert back.stdout.splitlines() == [
        "the nftables table inet synthdet (TorchServe's port guard) was removed or changed: put it back",
        f"the guard on TorchServe's ports is back: starting {TORCHSERVE} again",
    ]
    assert f"systemctl start --no-block {TORCHSERVE}" in guard.calls()
    assert guard.run("check").stdout == "" and not any("start" in c for c in guard.calls())


def test_nothing_is_guarded_while_the_firewall_unit_is_stopped_on_purpose(guard: Guard) -> None:
    (guard.root / "active-synthdet-firewall.service").unlink()
    done = guard.run("check")
    assert done.returncode == 0 and done.stdout == "" and not guard.table.exists()


def test_the_watcher_checks_at_start_and_on_each_deletion_of_the_table(guard: Guard) -> None:
    guard.run("load")
    guard.table.unlink()  # gone before the watcher started: its first check puts it back
    (guard.root / "events").write_text(
        "delete table inet filter\ndelete set inet synthdet __set0\n"
        "delete rule inet synthdet output handle 4\ndelete table inet synthdet\n"
    )
    guard.calls()
    watched = guard.run("watch")
    assert watched.returncode == 1  # the (stand-in) monitor ended: systemd restarts the watcher
    assert watched.stdout.splitlines() == [
        "the nftables table inet synthdet (TorchServe's port guard) was removed or changed: put it back",
        "nft monitor ended",
    ]
    calls = guard.calls()
    # The held copy was loaded through `nft -i`, a table owned by the watcher's process.
    assert "nft -i" in calls
    # A check at start (which loads the table: two listings) and one for each deletion of the
    # table, its chain or a rule (not inet filter's, not a set's); the firewall unit is not
    # asked: the watcher stops with it.
    assert len([c for c in calls if c == "nft --stateless list table inet synthdet"]) == 2 + 2
    assert len([c for c in calls if c.startswith("nft -f ")]) == 1
    assert not any(c.startswith("systemctl is-active") for c in calls)


def test_the_held_copy_is_one_owned_table_with_the_same_rules() -> None:
    held = firewall.render_held_rules(33, guard_metadata=True)
    assert held.count("\n") == 1 and held.startswith("table inet synthdet_held { flags owner; chain output {")
    assert held.endswith("; }; }\n")
    for rule in firewall.rule_lines(33, guard_metadata=True):
        assert f" {rule};" in held, rule
    assert rules_in(firewall.render_rules(33, guard_metadata=True)) == firewall.rule_lines(
        33, guard_metadata=True
    )


def rules_in(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "reject" in line and not line.startswith("#")]


def test_without_owner_flags_the_watcher_says_so_and_watches_alone(guard: Guard) -> None:
    guard.run("load")
    (guard.root / "no-owner").touch()
    (guard.root / "events").write_text("")
    watched = guard.run("watch")
    assert watched.stdout.splitlines()[0].startswith("no copy of the table that a flush passes by here")
    assert watched.stdout.splitlines()[-1] == "nft monitor ended"
