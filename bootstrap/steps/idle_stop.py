"""Idle stop: the machine powers itself off after N minutes nobody used it (`idle_stop_minutes`).

A GPU host left running bills all month; this stops it on *request* idleness
(a CPU-idle alarm is a poor proxy: a busy JVM stays above it, a GPU host
answering one phone sits below it). "Used" means, the latest of:

- a request to a model's prediction path under the URL secret (the app's
  frames, the web viewer's): nginx's model locations log each one to
  `ACTIVITY_LOG` (only a timestamp, `$msec`), whose mtime is the last. Health
  checks, the idle status itself and every path without the secret (the 404s)
  are logged elsewhere and never count;
- a login: open at a check (the clock does not run out under it), or begun
  since the last check (the journal's: a login shorter than a minute counts
  too). A session logind knows (SSH, a console or serial-console login), an
  SSH session without logind, an AWS Session Manager shell (its agent starts
  shells without PAM: its ssm-session-worker process). A deploy is an SSH
  session; so is somebody debugging;
- the start of the window: the last deploy, or the first boot after a noted
  power-off.

A timer runs `IDLE_SCRIPT check` every minute: it writes `STATUS_FILE` (idle
minutes, when it will stop; nginx serves it under the secret for `synthdet
status`, and reading it is not activity) and, once N minutes have passed,
says why in one journal line (also on the console, which the clouds keep)
and runs `systemctl poweroff`. The times are file mtimes, so a reboot keeps
the clock. Every boot gets at least 10 minutes (to boot and load the model:
health checks meanwhile are not use), a floor under the stop time rather than
a new window: the minutes idle before the boot still count, so a machine back
after a stop nobody noted (forced, a panic) is not powered off at its first
check, and not kept for N more minutes either. A power-off noted at shutdown
(idle stop's own, `systemctl poweroff`, a cloud's ACPI stop) also opens a new
window at the next boot: a machine started again on purpose (`synthdet wake`)
gets its N minutes (the script's header has the exact rule). The clouds keep a
powered-off VM stopped with its disk and static address (infra/: GCP stops a
VM whose guest shuts down, AWS is told `instance_initiated_shutdown_behavior =
stop`).

N = 0 (the default) installs nothing, and removes what an earlier deploy with
idle stop installed; the clock's folder last, by the nginx step once the site
no longer logs into it (nginx does not start with a log in a missing folder).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from bootstrap.steps.base import ETC_DIR, Run, ensure_file, render_template, systemctl_is_active
from bootstrap.steps.layout import Layout
from bootstrap.steps.step import Done, Footprint, Step
from serving.endpoint import idle_status_path

# The clock's files (status.json readable by nginx's workers: nothing secret in it).
IDLE_DIR = "/var/lib/synthdet-idle"
ACTIVITY_LOG = f"{IDLE_DIR}/requests.log"
STATUS_FILE = f"{IDLE_DIR}/status.json"
# nginx's log_format for ACTIVITY_LOG (defined in nginx-site.conf): a timestamp, no address.
ACTIVITY_FORMAT = "synthdet_activity"
# Root's: run by root's units only.
IDLE_SCRIPT = f"{ETC_DIR}/idle-stop.sh"
IDLE_CHECK_SERVICE = "synthdet-idle-check.service"
IDLE_CHECK_TIMER = "synthdet-idle-check.timer"
IDLE_BOOT_SERVICE = "synthdet-idle-boot.service"
# Each unit's file: /etc/systemd/system/<unit>; template: bootstrap/templates/<unit>.
# The timer first: undeploy stops them in this order.
UNITS = (IDLE_CHECK_TIMER, IDLE_CHECK_SERVICE, IDLE_BOOT_SERVICE)
UNIT_DIR = "/etc/systemd/system"
UNIT_FILES = tuple(f"{UNIT_DIR}/{unit}" for unit in UNITS)
MAX_MINUTES = 1440
# What removal_script prints: it took units and script away; the clock's folder is still there.
REMOVED = "REMOVED"
CLOCK_LEFT = "CLOCK_LEFT"


@dataclass(frozen=True)
class IdleStop:
    """The machine powers off after `minutes` idle minutes (0: never); its clock's files exist."""

    minutes: int
    # Off now, and an earlier deploy's clock folder is still there: the live nginx site logs
    # into it until the nginx step has rewritten it, which then removes it (`remove_old_clock`).
    old_clock: bool = False


def check_minutes(minutes: int) -> int:
    if not 0 <= minutes <= MAX_MINUTES:
        raise ValueError(f"idle stop minutes must be 0 (off) to {MAX_MINUTES}, not {minutes}")
    return minutes


def render_activity_log(minutes: int) -> str:
    """Lines for a model's location in the nginx site: what makes a request count.

    A location's own access_log replaces the server's, so the server's is named again."""
    if not minutes:
        return ""
    return (
        "        # Idle stop: each request here (the app's frames, the viewer's) moves the\n"
        "        # idle clock; health checks and paths without the secret never do.\n"
        "        access_log /var/log/nginx/synthdet.access.log synthdet;\n"
        f"        access_log {ACTIVITY_LOG} {ACTIVITY_FORMAT};\n"
    )


def render_status_location(minutes: int, secret: str, client_burst: int) -> str:
    """The idle status under the secret, for `synthdet status`; reading it is not activity."""
    if not minutes:
        return ""
    return (
        f"\n    # Idle stop's status (bootstrap/steps/idle_stop.py): read by `synthdet status`.\n"
        f"    location = {idle_status_path(secret)} {{\n"
        "        limit_except GET { deny all; }\n"
        f"        limit_req zone=synthdet_client burst={client_burst} nodelay;\n"
        "        default_type application/json;\n"
        f"        alias {STATUS_FILE};\n"
        "    }\n"
    )


def render_script() -> str:
    return render_template("synthdet-idle-stop.sh")


def render_units(minutes: int) -> dict[str, str]:
    """Each unit's file path -> its text."""
    values = {
        "script": IDLE_SCRIPT,
        "dir": IDLE_DIR,
        "minutes": minutes,
        "check_service": IDLE_CHECK_SERVICE,
        "check_timer": IDLE_CHECK_TIMER,
        "boot_service": IDLE_BOOT_SERVICE,
    }
    return {f"{UNIT_DIR}/{unit}": render_template(unit, **values) for unit in UNITS}


def removal_script() -> str:
    """Take idle stop's units and script away if an earlier deploy installed them (prints
    REMOVED); prints CLOCK_LEFT while its clock's folder exists (see `remove_old_clock`)."""
    units = " ".join(UNITS)
    return (
        f"if [ -e {IDLE_SCRIPT} ] || [ -e {UNIT_FILES[0]} ]; then "
        f"systemctl disable --now {units} 2>/dev/null || true; "
        f"rm -f {' '.join(UNIT_FILES)} {IDLE_SCRIPT}; "
        f"systemctl daemon-reload; systemctl reset-failed {units} 2>/dev/null || true; "
        f"echo {REMOVED}; fi; "
        f"if [ -e {IDLE_DIR} ]; then echo {CLOCK_LEFT}; fi"
    )


def remove_old_clock(run: Run, idle: IdleStop) -> bool:
    """Idle stop turned off: remove its clock's folder; whether there was one. For the nginx
    step, once the site on disk no longer logs there (nginx does not start with an access log
    in a missing folder: removed earlier, a failing nginx step would leave the old site naming
    it, and the endpoint down at nginx's next start)."""
    if not idle.old_clock:
        return False
    run.conn.run(f"rm -rf {IDLE_DIR}")
    return True


def apply(run: Run, layout: Layout) -> Done[IdleStop]:
    minutes = check_minutes(run.options.idle_stop_minutes)
    if not minutes:
        said = run.conn.run(removal_script()).stdout.split()
        removed = REMOVED in said
        return Done(
            removed,
            "off" + (": removed what an earlier deploy installed" if removed else ""),
            IdleStop(0, old_clock=CLOCK_LEFT in said),
        )
    changed = ensure_file(run, IDLE_SCRIPT, render_script(), mode=0o700)
    units_changed = False
    for path, text in render_units(minutes).items():
        units_changed = ensure_file(run, path, text) or units_changed
    if units_changed:
        run.conn.run("systemctl daemon-reload")
    # A deploy opens a new window (the SSH session it holds keeps the clock from running out
    # while it works).
    q = shlex.quote
    run.conn.run(f"install -d -m 755 {IDLE_DIR} && {IDLE_SCRIPT} open {q(IDLE_DIR)} {minutes}")
    for unit in (IDLE_BOOT_SERVICE, IDLE_CHECK_TIMER):
        run.conn.run(f"systemctl is-enabled --quiet {unit} || systemctl enable --quiet {unit}")
        if changed or units_changed or systemctl_is_active(run, unit) != "active":
            run.conn.run(f"systemctl restart {unit}")
            changed = True
    # The status exists at once (not a minute later): `synthdet status` right after a deploy.
    run.conn.run(f"systemctl start {IDLE_CHECK_SERVICE}")
    return Done(
        changed or units_changed,
        f"powers off after {minutes} minutes without a prediction request",
        IdleStop(minutes),
    )


# The script is in the layout's /etc/synthdet.
STEP = Step(
    "idle-stop",
    apply,
    Footprint(units=UNITS, files=UNIT_FILES, trees=(IDLE_DIR,)),
)
