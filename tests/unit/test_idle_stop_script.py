"""The idle-stop script itself (bootstrap/templates/synthdet-idle-stop.sh), run here by /bin/sh.

Its clock is file mtimes in a folder, so a test sets the times it needs instead of
waiting. What it asks the system (`ps` for SSH and Session Manager sessions, `systemctl`
at shutdown, `nginx -s reopen`) comes from stand-ins first on PATH; logind's sessions and
the journal's logins from stand-ins the script is told of (`SYNTHDET_IDLE_LOGINCTL`,
`SYNTHDET_IDLE_JOURNALCTL`; unset here: a host without logind or journal) that print
recorded output; the power-off is a command that leaves a file behind. The real host
(systemd, nginx, a reboot, a power-off) is tests/system/test_idle_stop.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootstrap.steps.idle_stop import render_script

MINUTES = 3


@dataclass
class Machine:
    """The script, its clock folder and the stand-ins it calls."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.root / "idle"

    @property
    def powered_off(self) -> Path:
        return self.root / "poweroff-called"

    def fake(self, name: str, body: str) -> None:
        path = self.root / "bin" / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def run(self, action: str, minutes: int = MINUTES) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}",
            "SYNTHDET_IDLE_POWEROFF": f"touch {self.powered_off}",
            # No logind, no journal unless a test records them (`logind`, `journal`).
            "SYNTHDET_IDLE_LOGINCTL": "",
            "SYNTHDET_IDLE_JOURNALCTL": "",
            **self.env,
        }
        return subprocess.run(
            ["/bin/sh", str(self.root / "idle-stop.sh"), action, str(self.dir), str(minutes)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

    def age(self, name: str, seconds: int) -> int:
        """Make DIR/name `seconds` old (created if missing); its mtime."""
        path = self.dir / name
        path.touch()
        when = int(time.time()) - seconds
        os.utime(path, (when, when))
        return when

    def logind(self, listed: str, sessions: dict[str, str]) -> None:
        """logind runs: `loginctl list-sessions --no-legend` prints `listed`, and
        `loginctl show-session ID -p Class -p State` the properties in `sessions` (ID -> text;
        an ID not there: the session is gone, loginctl fails)."""
        (self.root / "sessions").mkdir(exist_ok=True)
        (self.root / "listed.txt").write_text(listed)
        for sid, props in sessions.items():
            (self.root / "sessions" / sid).write_text(props)
        self.fake(
            "loginctl",
            f'case "$1" in list-sessions) cat {self.root}/listed.txt ;; '
            f'show-session) cat "{self.root}/sessions/$2" 2>/dev/null ;; *) exit 1 ;; esac',
        )
        self.env["SYNTHDET_IDLE_LOGINCTL"] = str(self.root / "bin" / "loginctl")

    def journal(self, lines: list[str]) -> Path:
        """The journal holds `lines` (journalctl's short-unix output); its arguments land in the
        returned file."""
        (self.root / "journal.txt").write_text("".join(f"{line}\n" for line in lines))
        called = self.root / "journalctl-called"
        self.fake("journalctl", f'echo "$@" > {called}; cat {self.root / "journal.txt"}')
        self.env["SYNTHDET_IDLE_JOURNALCTL"] = str(self.root / "bin" / "journalctl")
        return called

    def status(self) -> dict[str, object]:
        data = json.loads((self.dir / "status.json").read_text())
        assert isinstance(data, dict)
        return data


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    m = Machine(tmp_path)
    (tmp_path / "idle-stop.sh").write_text(render_script())
    (tmp_path / "bin").mkdir()
    m.dir.mkdir()
    m.fake("ps", "echo '/sbin/init'; echo 'sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups'")
    m.fake("nginx", f'echo "$@" >> {tmp_path}/nginx-called')
    m.fake("systemctl", "echo running")
    return m


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def test_a_fresh_folder_opens_a_window_and_says_so_in_the_status(machine: Machine) -> None:
    before = int(time.time())
    done = machine.run("check")
    assert done.stdout == "" and not machine.powered_off.exists()
    status = machine.status()
    assert status["idle_stop_minutes"] == MINUTES
    assert status["idle_seconds"] in (0, 1)
    assert status["last_request_at"] is None and status["last_login_at"] is None
    window = int((machine.dir / "window").stat().st_mtime)
    assert window >= before
    assert status["window_start_at"] == iso(window)
    assert status["stops_at"] == iso(window + MINUTES * 60)
    assert status["sessions"] == 0 and status["last_idle_stop_at"] is None
    # nginx's workers read it.
    assert (machine.dir / "status.json").stat().st_mode & 0o777 == 0o644


def test_idle_for_the_minutes_powers_off_once_with_one_line_saying_why(machine: Machine) -> None:
    machine.age("window", 600)
    request = machine.age("requests.log", MINUTES * 60 + 5)
    done = machine.run("check")
    assert machine.powered_off.exists()
    (line,) = done.stdout.splitlines()
    assert line.startswith("synthdet idle stop: powering off: no prediction request, login or deploy for 3.0")
    assert f"the last at {iso(request)}" in line and "synthdet wake --stack" in line
    # What the next boot and `synthdet status` read.
    assert (machine.dir / "powered-off").read_text().strip() == "idle"
    stopped = int((machine.dir / "last-stop").read_text())
    assert machine.status()["idle_seconds"] == stopped - request
    assert machine.status()["last_request_at"] == iso(request)


def test_short_of_the_minutes_it_only_counts(machine: Machine) -> None:
    machine.age("window", 600)
    request = machine.age("requests.log", MINUTES * 60 - 30)
    machine.run("check")
    assert not machine.powered_off.exists()
    status = machine.status()
    assert 150 <= int(str(status["idle_seconds"])) <= 152
    assert status["idle_minutes"] == 2.5
    assert status["stops_at"] == iso(request + MINUTES * 60)


def test_the_newest_of_requests_window_and_logins_counts(machine: Machine) -> None:
    machine.age("requests.log", 900)
    newest = machine.age("requests.log.1", 400)  # moved aside; nginx writes a new one
    machine.age("window", 1000)
    machine.age("login", 700)
    machine.run("check", minutes=10)
    assert not machine.powered_off.exists()
    assert machine.status()["last_request_at"] == iso(newest)
    machine.age("window", 30)  # a deploy: a new window
    machine.run("check", minutes=5)
    assert not machine.powered_off.exists()
    assert int(str(machine.status()["idle_seconds"])) < 60


def test_an_ssh_session_is_use(machine: Machine) -> None:
    machine.age("window", 3600)
    machine.age("requests.log", 3600)
    machine.fake(
        "ps", "echo 'sshd: synthdet [priv]'; echo 'sshd: synthdet@notty'; echo 'sshd-session: ops@pts/0'"
    )
    machine.run("check")
    assert not machine.powered_off.exists()
    status = machine.status()
    assert status["sessions"] == 2 and status["idle_seconds"] == 0
    assert status["last_login_at"] is not None
    # Gone again: the clock runs from the last session seen.
    machine.fake("ps", "echo 'sshd: unknown [net]'")
    machine.age("login", MINUTES * 60)
    machine.run("check")
    assert machine.powered_off.exists()


def test_a_clock_set_back_is_not_negative_idleness(machine: Machine) -> None:
    machine.age("window", -3600)  # an hour in the future
    machine.run("check")
    assert machine.status()["idle_seconds"] == 0 and not machine.powered_off.exists()


def test_a_big_log_is_moved_aside_and_nginx_reopens_it(machine: Machine) -> None:
    log = machine.dir / "requests.log"
    log.write_text("1700000000.123\n" * 80_000)  # > 1 MB
    machine.run("check")
    assert not log.exists() and (machine.dir / "requests.log.1").stat().st_size > 1_000_000
    assert (machine.root / "nginx-called").read_text().split() == ["-s", "reopen"]


def test_the_first_boot_after_a_power_off_opens_a_new_window(machine: Machine) -> None:
    machine.age("window", 7200)
    machine.age("requests.log", 7200)
    (machine.dir / "powered-off").write_text("idle\n")
    done = machine.run("boot")
    assert "a new window of 3 minutes (at least 10 after the boot)" in done.stdout
    assert not (machine.dir / "powered-off").exists()
    machine.run("check")
    assert not machine.powered_off.exists() and int(str(machine.status()["idle_seconds"])) < 5


def test_after_a_power_off_the_machine_runs_long_enough_to_load_its_model(machine: Machine) -> None:
    # Health checks while the model loads are not use: a small idle stop must not stop the
    # machine again before anyone could use it.
    (machine.dir / "powered-off").write_text("idle\n")
    machine.run("boot")
    grace = int((machine.dir / "grace").stat().st_mtime)
    assert machine.status()["stops_at"] == iso(grace + 600)  # the status is written at boot
    machine.age("window", MINUTES * 60 + 60)
    machine.run("check")
    assert not machine.powered_off.exists()
    assert machine.status()["stops_at"] == iso(grace + 600)
    machine.age("grace", 600)
    machine.run("check")
    assert machine.powered_off.exists()


def test_a_reboot_in_the_middle_keeps_the_clock_under_the_boots_floor(machine: Machine) -> None:
    # Used 100 s ago, then a reboot (no power-off noted): the minutes counted before it still
    # count; the boot only puts a floor under the stop time, it opens no new window.
    window = machine.age("window", 100)
    done = machine.run("boot")
    assert "keeps counting" in done.stdout and "new window" not in done.stdout
    assert int((machine.dir / "window").stat().st_mtime) == window
    grace = int((machine.dir / "grace").stat().st_mtime)
    machine.run("check")
    status = machine.status()
    assert 100 <= int(str(status["idle_seconds"])) <= 102
    assert status["stops_at"] == iso(grace + 600) and not machine.powered_off.exists()
    # Once the boot is 10 minutes past, the clock alone decides: the window's end, not a reset.
    machine.age("grace", 600)
    machine.run("check")
    assert machine.status()["stops_at"] == iso(window + MINUTES * 60)


def test_any_boot_gets_the_floor_also_after_a_stop_that_noted_nothing(machine: Machine) -> None:
    # A forced stop, a cloud stop after the guest ignored ACPI, a panic, `poweroff -f`: no
    # note at shutdown. Last used two hours ago; started again, the first check must not
    # power it off before the model could load.
    window = machine.age("window", 7200)
    request = machine.age("requests.log", 7200)
    machine.run("boot")
    grace = int((machine.dir / "grace").stat().st_mtime)
    assert time.time() - grace < 5
    machine.run("check")
    assert not machine.powered_off.exists()
    status = machine.status()
    assert int(str(status["idle_seconds"])) >= 7200  # the clock kept counting
    assert status["stops_at"] == iso(grace + 600) and status["last_request_at"] == iso(request)
    assert int((machine.dir / "window").stat().st_mtime) == window
    # Nobody came within the 10 minutes: it powers off.
    machine.age("grace", 600)
    machine.run("check")
    assert machine.powered_off.exists()


def test_the_floor_starts_at_the_boot_not_when_a_deploy_restarts_the_hook(machine: Machine) -> None:
    machine.run("boot")
    booted = machine.age("grace", 300)  # the boot was 5 minutes ago
    machine.run("boot")  # the same boot: a deploy restarting synthdet-idle-boot.service
    assert int((machine.dir / "grace").stat().st_mtime) == booted
    (machine.dir / "grace").write_text("an-earlier-boot\n")  # what a reboot leaves
    os.utime(machine.dir / "grace", (booted, booted))
    machine.run("boot")
    assert time.time() - (machine.dir / "grace").stat().st_mtime < 5


@pytest.mark.parametrize(
    ("jobs", "noted"),
    [
        ("123 poweroff.target start waiting\n124 systemd-poweroff.service start waiting", True),
        ("77 reboot.target start waiting\n78 systemd-reboot.service start waiting", False),
        ("9 kexec.target start waiting", False),
    ],
)
def test_a_shutdown_notes_a_power_off_but_not_a_reboot(machine: Machine, jobs: str, noted: bool) -> None:
    machine.fake(
        "systemctl",
        f'case "$1" in is-system-running) echo stopping ;; list-jobs) printf "%s\\n" \'{jobs}\' ;; esac',
    )
    machine.run("shutdown")
    assert (machine.dir / "powered-off").exists() is noted


def test_stopping_the_unit_while_the_machine_runs_notes_nothing(machine: Machine) -> None:
    machine.fake("systemctl", 'case "$1" in is-system-running) echo running ;; list-jobs) echo ;; esac')
    machine.run("shutdown")
    assert not (machine.dir / "powered-off").exists()


def test_open_starts_a_window_and_forgets_a_power_off(machine: Machine) -> None:
    machine.age("window", 7200)
    (machine.dir / "powered-off").write_text("shut down\n")
    machine.run("open")
    assert time.time() - (machine.dir / "window").stat().st_mtime < 5
    assert not (machine.dir / "powered-off").exists()


# -- what counts as a login ----------------------------------------------------------------
# `loginctl list-sessions --no-legend` as systemd 252 (Debian 12) prints it, and as 256+
# (Debian 13) does, with its own per-user manager sessions among them.
LISTED_252 = "      3 1000 admin        pts/0\n     c2    0 root   ttyS0\n"
LISTED_257 = (
    "      3 1000 admin -    1234 user    pts/0 no   -\n"
    "      4 1000 admin -    1240 manager -     no   -\n"
    "      7    0 root  -    2211 user    ttyS0 no   -\n"
)


def test_a_console_login_logind_knows_is_use(machine: Machine) -> None:
    machine.age("window", 3600)
    # A serial-console login (no sshd process): only logind knows it.
    machine.logind(LISTED_252, {"3": "Class=user\nState=closing\n", "c2": "Class=user\nState=active\n"})
    machine.run("check")
    status = machine.status()
    assert not machine.powered_off.exists()
    assert status["sessions"] == 1 and status["idle_seconds"] == 0


@pytest.mark.parametrize("listed", [LISTED_252, LISTED_257])
def test_logind_sessions_that_are_no_person_are_not_use(machine: Machine, listed: str) -> None:
    machine.age("window", 3600)
    # A session logged out with a process left behind (closing), logind's own manager
    # session, a background session, and one gone between listing and asking.
    machine.logind(
        listed,
        {
            "3": "Class=user\nState=closing\n",
            "4": "Class=manager\nState=active\n",
            "c2": "Class=background\nState=active\n",
        },
    )
    machine.run("check")
    assert machine.powered_off.exists()
    assert machine.status()["sessions"] == 0


def test_without_logind_answering_sshd_sessions_still_count(machine: Machine) -> None:
    machine.age("window", 3600)
    machine.fake("loginctl", "echo 'Failed to connect to bus: Host is down' >&2; exit 1")
    machine.env["SYNTHDET_IDLE_LOGINCTL"] = str(machine.root / "bin" / "loginctl")
    machine.fake("ps", "echo 'sshd: ops@pts/0'")
    machine.run("check")
    assert not machine.powered_off.exists() and machine.status()["sessions"] == 1


def test_a_session_manager_shell_is_use(machine: Machine) -> None:
    # AWS Session Manager's agent starts its shells without PAM (no logind session, no sshd):
    # one ssm-session-worker process per session.
    machine.age("window", 3600)
    machine.fake(
        "ps",
        "echo '/usr/bin/amazon-ssm-agent'; echo '/usr/bin/ssm-agent-worker'; "
        "echo '/usr/bin/ssm-session-worker ops-0a1b2c3d4e5f i-0123456789abcdef0'; echo 'sh'",
    )
    machine.run("check")
    assert not machine.powered_off.exists() and machine.status()["sessions"] == 1


def test_a_login_that_began_and_ended_between_two_checks_is_use(machine: Machine) -> None:
    machine.age("window", 3600)
    previous = machine.age("status.json", 60)  # the last check, a minute ago
    now = int(time.time())
    called = machine.journal(
        [
            # Before the last check: already seen then (or not: too old to matter).
            f"{previous - 600}.000001 host systemd-logind[87]: New session 9 of user admin.",
            # Since: an SSH login of 20 s (systemd 252's words), logind's own sessions (256+).
            f"{now - 40}.250000 host sshd[912]: Accepted publickey for admin from 10.0.0.9 port 51234 ssh2",
            f"{now - 40}.300000 host systemd-logind[87]: New session 12 of user admin.",
            f"{now - 30}.000000 host systemd-logind[87]: "
            "New session '13' of user 'admin' with class 'manager' and type 'unspecified'.",
            f"{now - 20}.000000 host systemd-logind[87]: Removed session 12.",
            f"{now - 10}.000000 host systemd-logind[87]: "
            "New session 'c4' of user 'root' with class 'background' and type 'unspecified'.",
        ]
    )
    machine.run("check")
    assert not machine.powered_off.exists()
    status = machine.status()
    assert status["sessions"] == 0 and status["last_login_at"] == iso(now - 40)
    assert int((machine.dir / "login").stat().st_mtime) == now - 40
    # It asked for logind's new sessions and sshd's logins since a little before the last check.
    args = called.read_text().split()
    since = int(args[args.index("--since") + 1].lstrip("@"))
    assert previous - 10 <= since <= previous
    assert "MESSAGE_ID=8d45620c1a4348dbb17410da57c60c66" in args and "SYSLOG_IDENTIFIER=sshd" in args


def test_a_login_of_systemd_256_and_later_words_counts(machine: Machine) -> None:
    machine.age("window", 3600)
    machine.age("status.json", 60)
    now = int(time.time())
    machine.journal(
        [
            f"{now - 15}.000000 host systemd-logind[87]: "
            "New session '5' of user 'admin' with class 'user' and type 'tty'."
        ]
    )
    machine.run("check")
    assert machine.status()["last_login_at"] == iso(now - 15) and not machine.powered_off.exists()


def test_an_older_login_in_the_journal_does_not_move_the_clock_back(machine: Machine) -> None:
    machine.age("window", 3600)
    login = machine.age("login", 30)
    now = int(time.time())
    machine.age("status.json", 60)
    machine.journal([f"{now - 50}.000000 host sshd[912]: Accepted publickey for admin from 10.0.0.9"])
    machine.run("check")
    assert int((machine.dir / "login").stat().st_mtime) == login
