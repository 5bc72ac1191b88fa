"""Who may reach the host: the CIDR lists, with `self` resolved to this machine.

SSH is opened to the deploying machine only by default: the bootstrap needs
it from here, and nobody else does. The lookup asks a public "what is my IP"
service once per program run.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Callable, Sequence

import pulumi

from infra.config import SELF_CIDR, StackConfig

# Plain-text answers ("203.0.113.7\n"); the second is tried when the first fails.
IP_ECHO_URLS = ("https://checkip.amazonaws.com", "https://api.ipify.org")


class PublicIpError(RuntimeError):
    pass


def my_public_ipv4(timeout_s: float = 5.0) -> str:
    """This machine's public IPv4 address as the internet sees it."""
    errors = []
    for url in IP_ECHO_URLS:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
                text = response.read(64).decode().strip()
            return str(ipaddress.IPv4Address(text))
        except (OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
    raise PublicIpError(
        "cannot find this machine's public IP for synthdet:sshAllowedCidrs 'self' "
        f"({'; '.join(errors)}); set the CIDRs explicitly, e.g. "
        "`pulumi config set --path 'synthdet:sshAllowedCidrs[0]' 203.0.113.7/32`"
    )


def resolve_cidrs(cidrs: Sequence[str], lookup: Callable[[], str] | None = None) -> list[str]:
    """Replace `self` with this machine's /32; keep the order, drop duplicates."""
    lookup = lookup or my_public_ipv4
    resolved: list[str] = []
    me: str | None = None
    for cidr in cidrs:
        if cidr == SELF_CIDR:
            me = me or lookup()
            value = f"{me}/32"
        else:
            value = str(ipaddress.ip_network(cidr, strict=False))
        if value not in resolved:
            resolved.append(value)
    return resolved


def split_families(cidrs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(IPv4 CIDRs, IPv6 CIDRs): AWS takes them in separate fields."""
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in cidrs if ipaddress.ip_network(c).version == 6]
    return v4, v6


def firewall_cidrs(stack: StackConfig) -> tuple[list[str], list[str]]:
    """(who may SSH in, who may reach the endpoint), `self` resolved, for a single host."""
    if stack.ssh_open_to_world():
        pulumi.log.warn("synthdet:sshAllowedCidrs opens SSH to the whole internet")
    return resolve_cidrs(stack.ssh_allowed_cidrs), resolve_cidrs(stack.endpoint_cidrs)
