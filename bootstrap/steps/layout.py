"""The service user and the directories the service owns.

TorchServe runs as an unprivileged system user (`synthdet`) that can write
only its state and log directories; configuration stays root-owned.
"""

from __future__ import annotations

from bootstrap.steps.base import (
    ETC_DIR,
    LOG_DIR,
    MODEL_STORE,
    OPT_DIR,
    SERVICE_USER,
    TLS_DIR,
    TS_TMP_DIR,
    VAR_DIR,
    Context,
    StepResult,
)

NAME = "layout"

# (path, owner, group, mode)
DIRECTORIES = (
    (OPT_DIR, "root", "root", "755"),
    (ETC_DIR, "root", SERVICE_USER, "750"),
    (TLS_DIR, "root", "root", "700"),
    (VAR_DIR, SERVICE_USER, SERVICE_USER, "750"),
    (MODEL_STORE, "root", SERVICE_USER, "750"),
    (TS_TMP_DIR, SERVICE_USER, SERVICE_USER, "700"),
    (LOG_DIR, SERVICE_USER, SERVICE_USER, "750"),
)


def script() -> str:
    """One round trip: create what is missing, fix what is off, print CHANGED if anything was."""
    lines = [
        "set -e",
        f"if ! id -u {SERVICE_USER} >/dev/null 2>&1; then",
        f"  useradd --system --user-group --home-dir {VAR_DIR} --no-create-home "
        f"--shell /usr/sbin/nologin --comment 'SynthDet TorchServe' {SERVICE_USER}",
        "  echo CREATED_USER",
        "fi",
    ]
    for path, owner, group, mode in DIRECTORIES:
        lines += [
            f"if [ \"$(stat -c '%U:%G %a' {path} 2>/dev/null)\" != '{owner}:{group} {mode}' ]; then",
            f"  install -d -o {owner} -g {group} -m {mode} {path}",
            f"  chown {owner}:{group} {path}; chmod {mode} {path}",
            "  echo CHANGED",
            "fi",
        ]
    # Partial uploads from a run whose connection died: never served, now swept.
    lines.append(f"find {MODEL_STORE} {ETC_DIR} -maxdepth 2 -name '.*.part-*' -type f -delete")
    return "\n".join(lines)


def apply(ctx: Context) -> StepResult:
    out = ctx.conn.run(script()).stdout
    if "CREATED_USER" in out:
        ctx.state.created_user = True
    changed = "CHANGED" in out or "CREATED_USER" in out
    return StepResult(NAME, changed, f"user {SERVICE_USER}, {VAR_DIR}, {ETC_DIR}, {LOG_DIR}")
