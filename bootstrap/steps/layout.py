"""The service account and the directories the service reads and writes.

TorchServe runs as a system account of its own (`SERVICE_USER`): no login
shell, no groups but its own, a home it cannot write. It can write only its
temporary and log directories; its working directory, configuration and
model store are root's. An existing account of that name that is not such a
system account (a person's login, an admin) is never taken over: the deploy
stops and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootstrap.facts import Account, account_query, parse_account_query
from bootstrap.files import PART_GLOB
from bootstrap.steps.base import (
    ETC_DIR,
    LOG_DIR,
    MODEL_STORE,
    OPT_DIR,
    SERVICE_USER,
    TLS_DIR,
    TS_TMP_DIR,
    VAR_DIR,
    VIEWER_DIR,
    DeployError,
    HostState,
    Run,
)
from bootstrap.steps.step import Done, Footprint, Step

NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")
# Debian/Ubuntu hand out uids from 1000 up to people (login.defs UID_MIN).
FIRST_LOGIN_UID = 1000
# The account's comment (GECOS): how a deploy knows an account is one a deploy made, even when
# the record of it was lost (a run that died between `useradd` and writing its state).
ACCOUNT_COMMENT = "SynthDet TorchServe"

# Folders of the system's where deploy places files of its own (the nginx site, the units).
SHARED_SYSTEM_DIRS = (
    "/etc/nginx/sites-available",
    "/etc/systemd/system",
    "/etc/systemd/system/nginx.service.d",
)

# (path, owner, group, mode)
DIRECTORIES = (
    (OPT_DIR, "root", "root", "755"),
    (VIEWER_DIR, "root", "root", "755"),
    (ETC_DIR, "root", SERVICE_USER, "750"),
    (TLS_DIR, "root", "root", "700"),
    (VAR_DIR, "root", SERVICE_USER, "750"),
    (MODEL_STORE, "root", SERVICE_USER, "750"),
    (TS_TMP_DIR, SERVICE_USER, SERVICE_USER, "700"),
    (LOG_DIR, SERVICE_USER, SERVICE_USER, "750"),
)


@dataclass(frozen=True)
class Layout:
    """The service account and the deploy's directories exist (so does the state's folder)."""

    service_user: str


def not_a_service_account(account: Account) -> list[str]:
    """Why `account` is someone's login rather than a system account (empty: it is one)."""
    reasons = []
    if account.uid == 0:
        reasons.append("it is root")
    elif account.uid >= FIRST_LOGIN_UID:
        reasons.append(f"uid {account.uid} is a person's (>= {FIRST_LOGIN_UID})")
    if account.shell not in NOLOGIN_SHELLS:
        reasons.append(f"it has a login shell ({account.shell})")
    if account.home.startswith("/home/") or account.home == "/root":
        reasons.append(f"its home is {account.home}")
    extra = sorted(set(account.groups) - {account.name})
    if extra:
        reasons.append(f"it is in the groups {', '.join(extra)}")
    return reasons


def check_service_account(account: Account | None) -> None:
    """Refuse to run the model as an account that belongs to somebody."""
    if account is None:
        return
    reasons = not_a_service_account(account)
    if reasons:
        raise DeployError(
            f"an account named {SERVICE_USER} already exists on the host and is not a service "
            f"account ({'; '.join(reasons)}). The model must not run as a login or admin "
            f"account, so nothing was changed. Rename or remove that account (or log in as "
            f"another user), then rerun the deploy."
        )


def create_account_script() -> str:
    return (
        f"useradd --system --user-group --home-dir {VAR_DIR} --no-create-home "
        f"--shell /usr/sbin/nologin --comment '{ACCOUNT_COMMENT}' {SERVICE_USER}"
    )


def directories_script() -> str:
    """One round trip: create what is missing, fix what is off, print CHANGED if anything was."""
    lines = ["set -e"]
    for path, owner, group, mode in DIRECTORIES:
        lines += [
            f"if [ \"$(stat -c '%U:%G %a' {path} 2>/dev/null)\" != '{owner}:{group} {mode}' ]; then",
            f"  install -d -o {owner} -g {group} -m {mode} {path}",
            f"  chown {owner}:{group} {path}; chmod {mode} {path}",
            "  echo CHANGED",
            "fi",
        ]
    # Partial uploads from a run whose connection died: never served, now swept; in the
    # shared system folders only ours (the nginx site and the units are named synthdet*).
    lines.append(f"find {MODEL_STORE} {ETC_DIR} {OPT_DIR} -maxdepth 2 -name '{PART_GLOB}' -type f -delete")
    lines.append(
        f"find {' '.join(SHARED_SYSTEM_DIRS)} -maxdepth 1 -name '.synthdet{PART_GLOB[1:]}' -type f "
        "-delete 2>/dev/null || true"
    )
    return "\n".join(lines)


def apply(run: Run, state: HostState) -> Done[Layout]:
    account = parse_account_query(run.conn.run(account_query(SERVICE_USER)).stdout)
    check_service_account(account)
    created = account is None
    if created:
        run.conn.run(create_account_script())
    if created or (account is not None and account.comment == ACCOUNT_COMMENT):
        # Recorded (and written by run_steps even if the step fails later): undeploy removes
        # exactly the accounts a deploy created. A system account with our comment is one an
        # earlier deploy made whose record was lost; a foreign system account is left alone.
        state.created_users = sorted({*state.created_users, SERVICE_USER})
    out = run.conn.run(directories_script()).stdout
    changed = created or "CHANGED" in out
    return Done(changed, f"account {SERVICE_USER}, {VAR_DIR}, {ETC_DIR}, {LOG_DIR}", Layout(SERVICE_USER))


STEP = Step(
    "layout",
    apply,
    # Its directories hold what later steps place in them (venv, model store, config,
    # TLS, logs, the state): removing them removes all that.
    Footprint(trees=(OPT_DIR, VAR_DIR, LOG_DIR, ETC_DIR), accounts=(SERVICE_USER,)),
)
