#!/bin/sh
# Written by synthdet deploy; edits are overwritten on the next deploy.
#
# Keeps the nftables table that guards TorchServe's loopback ports (and, on a
# replica, the cloud's metadata server) in place; see bootstrap/steps/firewall.py.
#   load   load the rules file (synthdet-firewall.service: at start, and on every
#          reload of nftables.service, whose configuration flushes the ruleset)
#   check  put the table back if it is gone or differs from what was loaded, with one
#          line in the journal (synthdet-firewall-check.timer, every 30 s)
#   watch  hold a copy of the rules in a table this process owns (a flush of the ruleset
#          passes it by, nobody else can delete it), and run `check` the moment nftables
#          reports something of the table deleted (`nft flush ruleset`, a restart of
#          nftables.service): synthdet-firewall-guard.service
# When the table cannot be put back, TorchServe is stopped: it never serves unguarded.
# The check that manages to put it back starts TorchServe again.
set -u
TABLE={{ table }}
RULES={{ rules }}
HELD_TABLE={{ held_table }}
# One line: `table inet $HELD_TABLE { flags owner; ... }`, fed to `nft -i`.
HELD_RULES={{ held_rules }}
FIREWALL={{ firewall_unit }}
SERVICE={{ service_unit }}
# (SYNTHDET_FIREWALL_STATE: tests/unit/test_firewall_guard.py runs the script elsewhere.)
STATE=${SYNTHDET_FIREWALL_STATE:-{{ state_dir }}}
# `nft --stateless list table` right after loading: the table as it must stay (no counters).
LOADED=$STATE/loaded
# Present while TorchServe is stopped because the table could not be put back.
STOPPED=$STATE/stopped-torchserve

# One at a time: a check must not compare the table with $LOADED while a load replaces both.
lock() {
    mkdir -p "$STATE" && exec 9>"$STATE/lock" && flock 9
}

load() {
    nft -f "$RULES" && nft --stateless list table inet "$TABLE" > "$LOADED"
}

intact() {
    [ -s "$LOADED" ] && [ "$(nft --stateless list table inet "$TABLE" 2>/dev/null)" = "$(cat "$LOADED")" ]
}

resume() {
    [ -e "$STOPPED" ] || return 0
    rm -f "$STOPPED"
    echo "the guard on TorchServe's ports is back: starting $SERVICE again"
    systemctl start --no-block "$SERVICE"
}

check() {
    if intact; then
        resume
        return 0
    fi
    # The firewall unit stopped on purpose (which stops TorchServe too, Requires=): nothing to
    # guard. (The watcher stops with it, BindsTo=: it skips this, to be as quick as it can.)
    [ "${1:-}" = watched ] || systemctl is-active --quiet "$FIREWALL" || return 0
    if load; then
        echo "the nftables table inet $TABLE (TorchServe's port guard) was removed or changed: put it back"
        resume
        return 0
    fi
    if [ ! -e "$STOPPED" ]; then
        touch "$STOPPED"
        echo "the nftables table inet $TABLE (TorchServe's port guard) is gone and cannot be put back: stopping $SERVICE until it can"
    fi
    systemctl stop --no-block "$SERVICE"
    return 1
}

# The held copy: `nft -i` reads the rules from a FIFO this shell keeps open, so the table it
# creates lives exactly as long as this watcher. Sets $holder (empty: no held copy).
hold() {
    holder=""
    fifo=$STATE/held.fifo
    rm -f "$fifo" && mkfifo -m 600 "$fifo" || return 0
    nft -i < "$fifo" > /dev/null 2> "$STATE/held.err" &
    holder=$!
    exec 8> "$fifo"
    cat "$HELD_RULES" >&8
    tries=0
    while [ "$tries" -lt 50 ]; do
        nft list table inet "$HELD_TABLE" > /dev/null 2>&1 && return 0
        tries=$((tries + 1))
        sleep 0.1
    done
    kill "$holder" 2> /dev/null
    exec 8>&-
    holder=""
    echo "no copy of the table that a flush passes by here (table owner flags need Linux 5.12 and a newer nft): the watcher alone puts the table back"
}

watch() {
    mkdir -p "$STATE"
    hold
    # The monitor starts first, then one check: nothing deleted in between goes unseen.
    # Sets go with the rules that use them: the table, its chain and its rules are what count.
    { echo started; exec nft monitor destroy; } | while read -r event; do
        case "$event" in
            started | "delete table inet $TABLE" | "delete chain inet $TABLE "* | "delete rule inet $TABLE "*)
                (lock && check watched) ;;
        esac
    done &
    monitor=$!
    # Either ending ends the watcher; systemd starts it again (Restart=always).
    while kill -0 "$monitor" 2> /dev/null; do
        if [ -n "$holder" ] && ! kill -0 "$holder" 2> /dev/null; then
            echo "the held copy of the table went away: restarting the watcher"
            return 1
        fi
        sleep 1
    done
    echo "nft monitor ended"
    return 1
}

case "${1:-}" in
    load) lock && load ;;
    check) lock && check ;;
    watch) watch ;;
    *) echo "usage: $0 load|check|watch" >&2; exit 2 ;;
esac
