"""Who may SSH into the stack's host, said in one line: where the address came from and how to change it.

`synthdet check` prints it before anything exists; the bootstrap repeats it when
SSH to the new host stays silent (bootstrap/ssh.py), because the usual cause is
a `self` address that is not the one this machine's SSH traffic leaves from
(a VPN, a corporate NAT, Cloud Shell).
"""

from __future__ import annotations

from collections.abc import Sequence

from infra.config import SELF_CIDR, StackConfig
from infra.network import IP_ECHO_URLS


def change_command(stack_name: str) -> str:
    return f"pulumi config set --path 'synthdet:sshAllowedCidrs[0]' ADDRESS/32 --stack {stack_name}"


def describe(stack: StackConfig, stack_name: str, resolved: Sequence[str]) -> str:
    """'the firewall admits SSH from A only (how it was found); to change it: ...'."""
    admitted = ", ".join(resolved) or "nobody"
    if SELF_CIDR in stack.ssh_allowed_cidrs:
        echo = " or ".join(IP_ECHO_URLS)
        how = (
            f"synthdet:sshAllowedCidrs 'self': this machine's public IPv4 as {echo} sees it; SSH "
            "from a VPN, a proxy or Cloud Shell may leave from another address"
        )
    else:
        how = "set in synthdet:sshAllowedCidrs"
    return (
        f"the firewall admits SSH from {admitted} only ({how}); to admit another address: "
        f"`{change_command(stack_name)}`, then `pulumi up`"
    )
