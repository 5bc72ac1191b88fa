"""Only root and nginx's workers may connect to TorchServe's ports on loopback.

TorchServe listens on 127.0.0.1, but every local user could connect there:
register a model from a directory (running its handler code), read metrics,
or post straight to the inference port past nginx's URL secret and limits.
An nftables rule on the loopback interface refuses any such connection whose
socket belongs to anybody else (`meta skuid`), for every TorchServe port
(inference, management, metrics, gRPC). The rules live in a unit of their
own that TorchServe's unit requires, so they are in place at every boot
before TorchServe starts, and undeploy removes both. The unit loads after
Debian's nftables.service (whose configuration starts with `flush ruleset`)
and is reloaded with it (PartOf=); a rerun of the deploy reloads rules that
went missing all the same.
"""

from __future__ import annotations

from bootstrap import files
from bootstrap.facts import parse_nginx_user
from bootstrap.steps.base import (
    ETC_DIR,
    TORCHSERVE_PORTS,
    UNIT_NAME,
    Context,
    DeployError,
    StepResult,
    ensure_file,
    render_template,
    systemctl_is_active,
)

NAME = "firewall"
TABLE = "synthdet"
RULES_FILE = f"{ETC_DIR}/nftables.conf"
FIREWALL_UNIT_NAME = "synthdet-firewall.service"
FIREWALL_UNIT_FILE = f"/etc/systemd/system/{FIREWALL_UNIT_NAME}"
NGINX_CONF = "/etc/nginx/nginx.conf"


def render_rules(allowed_uids: list[int], ports: tuple[int, ...] = TORCHSERVE_PORTS) -> str:
    """One atomic nft script: (re)create the table with one output rule."""
    uids = ", ".join(str(uid) for uid in sorted(set(allowed_uids)))
    port_set = ", ".join(str(port) for port in sorted(ports))
    return "\n".join(
        [
            "# Written by synthdet deploy; edits are overwritten on the next deploy.",
            f"# Loopback connections to TorchServe's ports ({port_set}) from any user but",
            f"# root and nginx's workers (uids {uids}) are refused with a TCP reset.",
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "    chain output {",
            "        type filter hook output priority filter; policy accept;",
            f'        oifname "lo" tcp dport {{ {port_set} }} meta skuid != {{ {uids} }} '
            "counter reject with tcp reset",
            "    }",
            "}",
            "",
        ]
    )


def render_unit() -> str:
    return render_template("synthdet-firewall.service", rules=RULES_FILE, table=TABLE, service_unit=UNIT_NAME)


def nginx_uid(ctx: Context) -> int:
    conf = files.read_file(ctx.conn, NGINX_CONF) or b""
    user = parse_nginx_user(conf.decode(errors="replace"))
    res = ctx.conn.run(f"id -u {user}", check=False)
    if not res.ok or not res.stdout.strip().isdigit():
        raise DeployError(
            f"nginx runs its workers as {user!r} ({NGINX_CONF}), but the host has no such user: "
            "fix nginx's `user` directive or reinstall nginx, then rerun the deploy."
        )
    return int(res.stdout.strip())


def apply(ctx: Context) -> StepResult:
    if not ctx.conn.run("command -v nft", check=False).ok:
        raise DeployError("nft (the nftables package) is missing on the host; install nftables and rerun")
    changed = ensure_file(ctx, RULES_FILE, render_rules([0, nginx_uid(ctx)]), mode=0o600)
    unit_changed = ensure_file(ctx, FIREWALL_UNIT_FILE, render_unit())
    if unit_changed:
        ctx.conn.run("systemctl daemon-reload")
    ctx.conn.run(
        f"systemctl is-enabled --quiet {FIREWALL_UNIT_NAME} || systemctl enable --quiet {FIREWALL_UNIT_NAME}"
    )
    # The unit stays "active" (RemainAfterExit) when somebody flushed the ruleset since (`nft
    # flush ruleset`, a restart of Debian's nftables.service): look at the table itself too.
    loaded = ctx.conn.run(f"nft list table inet {TABLE}", check=False).ok
    if changed or unit_changed or not loaded or systemctl_is_active(ctx, FIREWALL_UNIT_NAME) != "active":
        res = ctx.conn.run(f"systemctl restart {FIREWALL_UNIT_NAME}", check=False)
        if not res.ok:
            status = ctx.conn.run(f"journalctl -u {FIREWALL_UNIT_NAME} -n 20 --no-pager", check=False).stdout
            raise DeployError(
                f"the firewall rules for TorchServe's ports could not be loaded: {status.strip()[-800:]}\n"
                "The kernel needs nftables support (nf_tables); TorchServe is not started without them."
            )
        changed = True
    return StepResult(
        NAME, changed, f"TorchServe ports {', '.join(map(str, TORCHSERVE_PORTS))}: root and nginx only"
    )
