#!/bin/sh
# Written by synthdet deploy; edits are overwritten on the next deploy.
#
# Idle stop (bootstrap/steps/idle_stop.py): the machine powers itself off after
# MINUTES in which nobody used it. Usage: idle-stop.sh ACTION DIR MINUTES
#   check     (synthdet-idle-check.timer, every minute) write DIR/status.json; when the
#             machine has been idle for MINUTES and booted at least BOOT_GRACE_S ago: one
#             line in the journal (and on the console, which the clouds keep) saying why,
#             then `systemctl poweroff`
#   open      (a deploy) a new window starts now
#   boot      (synthdet-idle-boot.service, at boot) the boot's floor (below); after a noted
#             power-off also a new window; write the status
#   shutdown  (the same unit, when the machine shuts down) note a power-off; a reboot is not one
# "Used" is the latest of these times (each a file's mtime, so a reboot keeps them):
#   DIR/requests.log[.1]  nginx appends a line for each request to a prediction path under the
#                         URL secret: the app's frames, the web viewer's. Health checks, the
#                         idle status and paths without the secret never reach it.
#   DIR/window            the window's start: the last deploy, or the first boot after a noted
#                         power-off
#   DIR/login             the last login `check` saw: one open at the check, or one that began
#                         since the last check (the journal: a login shorter than a minute)
# A login: a session logind knows (SSH, a console or serial-console login; not its own manager
# and background sessions), an SSH session (sshd's process: also without logind), an AWS
# Session Manager shell (its ssm-session-worker process: the agent starts shells without PAM,
# so logind never sees them). A deploy is an SSH session.
#
# The boot rule. Every boot gets BOOT_GRACE_S: the machine does not power off before then
# (DIR/grace: its mtime is when this boot began; its text the kernel's boot id, so a deploy
# restarting the unit in the same boot moves nothing). That is a floor under the stop time,
# not a new window: the idle minutes counted before the boot keep counting. So a reboot in the
# middle loses no minutes, and a machine that comes back after a stop nobody noted (a forced
# stop, a cloud stop after the guest ignored ACPI, a panic, `poweroff -f`) still runs long
# enough to boot and load its model (health checks while it loads are not use) and powers off
# BOOT_GRACE_S after the boot unless somebody uses it (`synthdet wake`'s own test request is a
# use). Only a power-off noted at shutdown (idle stop's own, `systemctl poweroff`, the cloud's
# ACPI stop) also opens a new window of MINUTES at the next boot: it was stopped on purpose and
# is started again to be used.
set -eu
ACTION=$1
DIR=$2
MINUTES=$3
# The unit tests power off something else.
POWEROFF=${SYNTHDET_IDLE_POWEROFF:-systemctl poweroff}
# logind's sessions where logind runs (it keeps /run/systemd/seats); the journal where there is
# one. The unit tests name stand-ins printing recorded output (empty: there is none).
if [ -d /run/systemd/seats ]; then LOGINCTL_FOUND=loginctl; else LOGINCTL_FOUND=; fi
LOGINCTL=${SYNTHDET_IDLE_LOGINCTL-$LOGINCTL_FOUND}
if command -v journalctl >/dev/null 2>&1; then JOURNALCTL_FOUND=journalctl; else JOURNALCTL_FOUND=; fi
JOURNALCTL=${SYNTHDET_IDLE_JOURNALCTL-$JOURNALCTL_FOUND}
# systemd's message id of logind's "New session" (SD_MESSAGE_SESSION_START).
SESSION_START=8d45620c1a4348dbb17410da57c60c66
# nginx's log of counted requests is moved aside past this size (one line a request).
ROTATE_BYTES=1048576
# Every boot: the machine runs at least this long (DIR/grace: the boot).
BOOT_GRACE_S=600

mtime() {
    stat -c %Y "$1" 2>/dev/null || echo 0
}

latest() {
    newest=0
    for t in "$@"; do
        [ "$t" -le "$newest" ] || newest=$t
    done
    echo "$newest"
}

iso() {
    date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ
}

json_time() {
    if [ "$1" -gt 0 ]; then printf '"%s"' "$(iso "$1")"; else printf null; fi
}

minutes() {
    printf '%d.%d' $(($1 / 60)) $(($1 % 60 * 10 / 60))
}

# Authenticated SSH sessions: OpenSSH names their processes `sshd: USER@TTY` (`notty` for a
# command such as a deploy's), or `sshd-session: USER@TTY` from 9.8 on.
# (ps, not pgrep: the unit tests stand in for ps.)
# shellcheck disable=SC2009
ssh_sessions() {
    ps -eo args= | grep -Ec '^sshd(-session)?: [^ ]+@' || true
}

# AWS Session Manager's shells and port forwards: one ssm-session-worker process each.
# shellcheck disable=SC2009
ssm_sessions() {
    ps -eo args= | grep -Ec '^(/[^ ]*/)?ssm-session-worker( |$)' || true
}

# logind's sessions of people (class user; not its per-user managers, background jobs or
# greeters), not those logged out with a process left behind (closing); "none" where logind
# does not answer.
logind_sessions() {
    [ -n "$LOGINCTL" ] || { echo none; return 0; }
    listed=$($LOGINCTL list-sessions --no-legend 2>/dev/null) || { echo none; return 0; }
    printf '%s\n' "$listed" | while read -r id _; do
        [ -n "$id" ] || continue
        # A session gone since the listing: loginctl fails, and it is not counted.
        props=$($LOGINCTL show-session "$id" -p Class -p State 2>/dev/null) || continue
        case "$props" in
            *State=closing*) ;;
            *Class=user*) echo "$id" ;;
        esac
    done | grep -c . || true
}

# The newest login that began at or after $1 (epoch seconds) by the journal, 0 if none: logind's
# new sessions (systemd 256+ names their class: not its managers' or background ones) and sshd's
# accepted logins. It sees a login that began and ended between two checks.
recent_login() {
    [ -n "$JOURNALCTL" ] || { echo 0; return 0; }
    { $JOURNALCTL --no-pager -q -o short-unix --since "@$1" "MESSAGE_ID=$SESSION_START" + \
        SYSLOG_IDENTIFIER=sshd + SYSLOG_IDENTIFIER=sshd-session 2>/dev/null || true; } |
        awk -v from="$1" '
            / New session / && / with class / && !/ with class .user/ { next }
            / New session | Accepted / { t = int($1); if (t >= from && t > newest) newest = t }
            END { print newest + 0 }'
}

# Logins open now ($sessions) and the time of the last one seen (DIR/login).
count_logins() {
    ssh=$(ssh_sessions)
    ssm=$(ssm_sessions)
    logind=$(logind_sessions)
    # An SSH session is one of logind's too where pam_systemd registers it: not counted twice.
    people=$ssh
    [ "$logind" = none ] || [ "$logind" -le "$people" ] || people=$logind
    sessions=$((people + ssm))
    [ "$sessions" -eq 0 ] || touch "$DIR/login"
    # Since the last check (status.json's time), with a few seconds of overlap.
    checked=$(mtime "$DIR/status.json")
    [ "$checked" -gt 0 ] || checked=$((now - 60))
    began=$(recent_login $((checked - 5)))
    [ "$began" -le "$now" ] || began=$now
    [ "$began" -le "$(mtime "$DIR/login")" ] || touch -d "@$began" "$DIR/login"
}

rotate() {
    [ "$(stat -c %s "$DIR/requests.log" 2>/dev/null || echo 0)" -gt "$ROTATE_BYTES" ] || return 0
    mv -f "$DIR/requests.log" "$DIR/requests.log.1"
    # nginx opens a new requests.log (its mtime then says "now": at most a minute early, once a MB).
    nginx -s reopen 2>/dev/null || true
}

write_status() {
    cat > "$DIR/.status.json" <<EOF
{
  "idle_stop_minutes": $MINUTES,
  "idle_seconds": $idle,
  "idle_minutes": $(minutes "$idle"),
  "stops_at": $(json_time "$stops"),
  "last_request_at": $(json_time "$request"),
  "last_login_at": $(json_time "$login"),
  "window_start_at": $(json_time "$window"),
  "sessions": $sessions,
  "last_idle_stop_at": $(json_time "$(cat "$DIR/last-stop" 2>/dev/null || echo 0)"),
  "checked_at": $(json_time "$now")
}
EOF
    chmod 644 "$DIR/.status.json"
    mv -f "$DIR/.status.json" "$DIR/status.json"
}

# How long the machine has been idle, and when it will stop: $idle, $since, $stops ...
measure() {
    now=$(date +%s)
    [ -e "$DIR/window" ] || touch "$DIR/window"
    count_logins
    rotate
    request=$(latest "$(mtime "$DIR/requests.log")" "$(mtime "$DIR/requests.log.1")")
    window=$(mtime "$DIR/window")
    login=$(mtime "$DIR/login")
    since=$(latest "$request" "$window" "$login")
    idle=$((now - since))
    [ "$idle" -ge 0 ] || idle=0  # the clock was set back
    limit=$((MINUTES * 60))
    grace_until=0
    [ ! -e "$DIR/grace" ] || grace_until=$(($(mtime "$DIR/grace") + BOOT_GRACE_S))
    stops=$(latest $((since + limit)) "$grace_until")
}

check() {
    measure
    write_status
    [ "$idle" -ge "$limit" ] && [ "$now" -ge "$grace_until" ] || return 0
    echo "$now" > "$DIR/last-stop"
    echo idle > "$DIR/powered-off"
    if [ "$request" -gt 0 ]; then last="the last at $(iso "$request")"; else last="none yet"; fi
    echo "synthdet idle stop: powering off: no prediction request, login or deploy for" \
        "$(minutes "$idle") minutes (idle stop after $MINUTES; requests: $last). Start it again with" \
        "\`synthdet wake --stack NAME\` (or the cloud's console): same address, same QR code."
    exec $POWEROFF
}

boot() {
    this_boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
    # The first time in this boot (or where the kernel has no boot id): the floor starts now.
    if [ -z "$this_boot" ] || [ "$(cat "$DIR/grace" 2>/dev/null || true)" != "$this_boot" ]; then
        echo "$this_boot" > "$DIR/grace"
        new_boot=yes
    else
        new_boot=no
    fi
    if [ -e "$DIR/powered-off" ]; then
        why=$(cat "$DIR/powered-off")
        touch "$DIR/window"
        rm -f "$DIR/powered-off"
        echo "synthdet idle stop: started after a power-off ($why): a new window of $MINUTES minutes" \
            "(at least $((BOOT_GRACE_S / 60)) after the boot)"
        new_boot=no
    fi
    # The status at once, not at the first check (`synthdet status` right after `synthdet wake`).
    measure
    write_status
    [ "$new_boot" = yes ] || return 0
    echo "synthdet idle stop: booted without a noted power-off (a reboot, or a stop that skipped the" \
        "shutdown): the idle clock keeps counting ($(minutes "$idle") minutes idle, idle stop after" \
        "$MINUTES); no power-off before $(iso "$grace_until") (time to boot and load the model)," \
        "then at $(iso "$stops") unless used"
}

shutdown() {
    # Only when the machine shuts down, not when a deploy stops this unit.
    [ "$(systemctl is-system-running 2>/dev/null || true)" = stopping ] || return 0
    # A reboot keeps the clock: minutes counted before it still count after it.
    if systemctl list-jobs --no-legend 2>/dev/null | grep -Eq '(^| )(reboot|kexec|soft-reboot)\.target '; then
        return 0
    fi
    [ -e "$DIR/powered-off" ] || echo "shut down" > "$DIR/powered-off"
}

open_window() {
    touch "$DIR/window"
    rm -f "$DIR/powered-off"
}

case "$ACTION" in
    check) check ;;
    open) open_window ;;
    boot) boot ;;
    shutdown) shutdown ;;
    *) echo "usage: $0 check|open|boot|shutdown DIR MINUTES" >&2; exit 2 ;;
esac
