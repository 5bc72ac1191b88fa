"""Only root may connect to TorchServe's ports on loopback, nginx's workers to its inference port.

TorchServe listens on 127.0.0.1, but every local user could connect there:
register a model (running its handler code as the service), read metrics, or
post straight to the inference port past nginx's URL secret and limits. An
nftables table (`inet synthdet`) refuses any such connection whose socket
belongs to anybody else (`meta skuid`): the management, metrics and gRPC ports
are root's alone, the inference port root's and nginx's workers'. Behind a
cloud load balancer (a replica, which fetched its URL secret with the
instance's own cloud credentials) the same table also keeps every user but
root off the cloud's metadata server, whose token endpoints hand out those
credentials.

The table is loaded by a unit of its own that TorchServe's unit requires, so
it is in place at every boot before TorchServe starts, and stopping it stops
TorchServe. It does not stay in place by itself: Debian's nftables.service
(re)loads a configuration that starts with `flush ruleset`, and anyone can run
`nft flush ruleset`. So:

- the unit loads after nftables.service and reloads whenever that reloads
  (`ReloadPropagatedFrom=`);
- a watcher (`FIREWALL_GUARD_UNIT`) holds a copy of the same rules in a table
  its own `nft -i` owns (`HELD_TABLE`, `flags owner`, Linux 5.12+): a flush of
  the ruleset passes it by and nobody else can delete it, so TorchServe stays
  guarded while the table itself is gone. Where the kernel or nft cannot do
  that, the watcher's `nft monitor` is all there is: it loads the table again
  the moment nftables reports any part of it deleted (milliseconds later);
- a timer (`FIREWALL_CHECK_TIMER`) compares the live table with the one loaded
  every 30 s and loads it again if they differ;
- the watcher and the timer stop TorchServe while the table cannot be loaded,
  and start it again once it can. Each says in the journal what it did
  (`journalctl -t synthdet-firewall`).

All of it is one shell script (`GUARD_SCRIPT`: load, check, watch) and four
units; undeploy removes them with the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bootstrap import files
from bootstrap.facts import parse_nginx_user
from bootstrap.steps.base import (
    ALPN_PORT,
    ETC_DIR,
    GRPC_PORTS,
    INFERENCE_PORT,
    MANAGEMENT_PORT,
    METRICS_PORT,
    SITE_PORT,
    UNIT_NAME,
    DeployError,
    Run,
    ensure_file,
    render_template,
    systemctl_is_active,
)
from bootstrap.steps.layout import Layout
from bootstrap.steps.packages import SystemPackages
from bootstrap.steps.step import Done, Footprint, Step

TABLE = "synthdet"
RULES_FILE = f"{ETC_DIR}/nftables.conf"
# The same rules in a table owned by the watcher's `nft -i` (`flags owner`, Linux 5.12+): a flush
# of the ruleset passes it by and nobody else can delete it; it goes when that process goes.
HELD_TABLE = "synthdet_held"
HELD_RULES_FILE = f"{ETC_DIR}/nftables-held.conf"
GUARD_SCRIPT = f"{ETC_DIR}/firewall-guard.sh"
# What the script keeps between runs (the table as loaded, whether it stopped TorchServe).
GUARD_STATE_DIR = "/run/synthdet-firewall"
FIREWALL_UNIT_NAME = "synthdet-firewall.service"
FIREWALL_GUARD_UNIT = "synthdet-firewall-guard.service"
FIREWALL_CHECK_SERVICE = "synthdet-firewall-check.service"
FIREWALL_CHECK_TIMER = "synthdet-firewall-check.timer"
# Each unit's file: /etc/systemd/system/<unit>; template: bootstrap/templates/<unit>.
UNITS = (FIREWALL_UNIT_NAME, FIREWALL_GUARD_UNIT, FIREWALL_CHECK_SERVICE, FIREWALL_CHECK_TIMER)
UNIT_DIR = "/etc/systemd/system"
FIREWALL_UNIT_FILE = f"{UNIT_DIR}/{FIREWALL_UNIT_NAME}"
NGINX_CONF = "/etc/nginx/nginx.conf"
# nginx proxies to the inference port only; everything else TorchServe listens on is root's.
# With ACME, nginx's splitter also connects to the site's and the responder's loopback ports.
NGINX_PORTS = (INFERENCE_PORT, SITE_PORT, ALPN_PORT)
ROOT_ONLY_PORTS = (MANAGEMENT_PORT, METRICS_PORT, *GRPC_PORTS)
# The clouds' instance metadata servers (GCP and AWS share the IPv4 address; AWS's IPv6
# endpoint on Nitro, GCP's for IPv6-only instances) and the ports of their HTTP(S) APIs.
# DNS (GCP's resolver is the same address) and NTP stay open to everyone.
METADATA_IPV4 = ("169.254.169.254",)
METADATA_IPV6 = ("fd00:ec2::254", "fd20:ce::254")
METADATA_PORTS = (80, 443)


@dataclass(frozen=True)
class Firewall:
    """TorchServe's ports refuse everybody but root (nginx: inference); `unit` loads the rules."""

    unit: str


def _set(values: Sequence[object]) -> str:
    """An nft value or anonymous set: `80` or `{ 80, 443 }`."""
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


CHAIN = "type filter hook output priority filter; policy accept;"


def rule_lines(nginx_uid: int, *, guard_metadata: bool = False) -> list[str]:
    """The output chain's rules, the same in the table and in its held copy."""
    nginx_ports = _set(sorted(NGINX_PORTS))
    root_ports = _set(sorted(ROOT_ONLY_PORTS))
    readers = _set(sorted({0, nginx_uid}))
    rules = [
        f'oifname "lo" tcp dport {nginx_ports} meta skuid != {readers} counter reject with tcp reset',
        f'oifname "lo" tcp dport {root_ports} meta skuid != 0 counter reject with tcp reset',
    ]
    if guard_metadata:
        refuse = f"tcp dport {_set(METADATA_PORTS)} meta skuid != 0 counter reject with tcp reset"
        rules += [f"ip daddr {_set(METADATA_IPV4)} {refuse}", f"ip6 daddr {_set(METADATA_IPV6)} {refuse}"]
    return rules


def render_rules(nginx_uid: int, *, guard_metadata: bool = False) -> str:
    """One atomic nft script: (re)create the table with its output rules."""
    lines = [
        "# Written by synthdet deploy; edits are overwritten on the next deploy.",
        "# Loopback connections to TorchServe's ports from anybody but root (and nginx's",
        f"# workers, uid {nginx_uid}, to the inference port) are refused with a TCP reset.",
    ]
    if guard_metadata:
        lines.append(
            "# So are HTTP(S) connections to the cloud's metadata server (the instance's credentials)."
        )
    lines += [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "    chain output {",
        f"        {CHAIN}",
        *(f"        {rule}" for rule in rule_lines(nginx_uid, guard_metadata=guard_metadata)),
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def render_held_rules(nginx_uid: int, *, guard_metadata: bool = False) -> str:
    """The held copy for `nft -i`: one line (one transaction), a table its process owns."""
    rules = "; ".join(rule_lines(nginx_uid, guard_metadata=guard_metadata))
    return f"table inet {HELD_TABLE} {{ flags owner; chain output {{ {CHAIN} {rules}; }}; }}\n"


def render_units() -> dict[str, str]:
    """Each unit's file path -> its text."""
    values = {
        "table": TABLE,
        "guard": GUARD_SCRIPT,
        "service_unit": UNIT_NAME,
        "firewall_unit": FIREWALL_UNIT_NAME,
        "guard_unit": FIREWALL_GUARD_UNIT,
        "check_timer": FIREWALL_CHECK_TIMER,
    }
    return {f"{UNIT_DIR}/{unit}": render_template(unit, **values) for unit in UNITS}


def render_guard_script() -> str:
    return render_template(
        "synthdet-firewall-guard.sh",
        table=TABLE,
        rules=RULES_FILE,
        held_table=HELD_TABLE,
        held_rules=HELD_RULES_FILE,
        state_dir=GUARD_STATE_DIR,
        firewall_unit=FIREWALL_UNIT_NAME,
        service_unit=UNIT_NAME,
    )


def nginx_uid(run: Run) -> int:
    conf = files.read_file(run.conn, NGINX_CONF) or b""
    user = parse_nginx_user(conf.decode(errors="replace"))
    res = run.conn.run(f"id -u {user}", check=False)
    if not res.ok or not res.stdout.strip().isdigit():
        raise DeployError(
            f"nginx runs its workers as {user!r} ({NGINX_CONF}), but the host has no such user: "
            "fix nginx's `user` directive or reinstall nginx, then rerun the deploy."
        )
    return int(res.stdout.strip())


def load_rules(run: Run, active: bool) -> None:
    """Load the table: a reload of the active unit (TorchServe keeps running) or its start."""
    action = "reload" if active else "start"
    res = run.conn.run(f"systemctl {action} {FIREWALL_UNIT_NAME}", check=False)
    if not res.ok:
        status = run.conn.run(f"journalctl -u {FIREWALL_UNIT_NAME} -n 20 --no-pager", check=False).stdout
        raise DeployError(
            f"the firewall rules for TorchServe's ports could not be loaded: {status.strip()[-800:]}\n"
            "The kernel needs nftables support (nf_tables); TorchServe is not started without them."
        )


def apply(run: Run, packages: SystemPackages, layout: Layout) -> Done[Firewall]:
    if not run.conn.run("command -v nft", check=False).ok:
        raise DeployError("nft (the nftables package) is missing on the host; install nftables and rerun")
    # A replica sits behind a cloud load balancer (and read its secret with the instance's credentials).
    uid, metadata = nginx_uid(run), bool(run.options.balancer_cidrs)
    changed = ensure_file(run, RULES_FILE, render_rules(uid, guard_metadata=metadata), mode=0o600)
    held = render_held_rules(uid, guard_metadata=metadata)
    # The watcher loads the held copy when it starts: a change restarts it (below).
    script_changed = ensure_file(run, HELD_RULES_FILE, held, mode=0o600)
    script_changed |= ensure_file(run, GUARD_SCRIPT, render_guard_script(), mode=0o700)
    units_changed = False
    for path, text in render_units().items():
        units_changed = ensure_file(run, path, text) or units_changed
    if units_changed:
        run.conn.run("systemctl daemon-reload")
    for unit in (FIREWALL_UNIT_NAME, FIREWALL_GUARD_UNIT, FIREWALL_CHECK_TIMER):
        run.conn.run(f"systemctl is-enabled --quiet {unit} || systemctl enable --quiet {unit}")
    # The unit stays "active" (RemainAfterExit) when somebody flushed the ruleset since and
    # nothing put it back yet: look at the table itself too.
    loaded = run.conn.run(f"nft list table inet {TABLE}", check=False).ok
    active = systemctl_is_active(run, FIREWALL_UNIT_NAME) == "active"
    if changed or script_changed or units_changed or not loaded or not active:
        load_rules(run, active)
        changed = True
    # The watcher and the timer: (re)started when what they run changed, started when down.
    for unit in (FIREWALL_GUARD_UNIT, FIREWALL_CHECK_TIMER):
        if script_changed or units_changed or systemctl_is_active(run, unit) != "active":
            run.conn.run(f"systemctl restart {unit}")
            changed = True
    ports = f"{INFERENCE_PORT}: root and nginx; {', '.join(map(str, ROOT_ONLY_PORTS))}: root"
    return Done(changed, f"TorchServe ports {ports}", Firewall(FIREWALL_UNIT_NAME))


# The rules file and the script are in the layout's /etc/synthdet. Undeploy stops the units in
# this order: the timer and the watcher first, so nothing loads the table again behind it.
STEP = Step(
    "firewall",
    apply,
    Footprint(
        units=(FIREWALL_CHECK_TIMER, FIREWALL_CHECK_SERVICE, FIREWALL_GUARD_UNIT, FIREWALL_UNIT_NAME),
        nft_tables=(TABLE,),
        files=tuple(f"{UNIT_DIR}/{unit}" for unit in UNITS),
        trees=(GUARD_STATE_DIR,),
    ),
)
