"""A host that already exists (a lab box, an on-prem GPU server): no cloud resources.

It still is a component with the same `Host` shape, so the bootstrap resource
and the stack outputs are wired exactly as for a cloud VM.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from infra.config import ConfigError, Settings, resolve_path
from infra.fleet import Fleet
from infra.host import Host, read_key_file

NAME = "synthdet"
DEFAULT_SSH_USER = "root"

__all__ = ["build_fleet", "build_host"]


@dataclass
class ExistingHostArgs:
    host: str
    user: str
    key_path: str
    port: int = 22
    gpu: str | None = None


class ExistingHost(pulumi.ComponentResource):
    host: Host

    def __init__(self, name: str, args: ExistingHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:ExistingHost", name, None, opts)
        key_path = resolve_path(args.key_path)
        private_text, _ = read_key_file(key_path)
        # No cloud id: the login is what identifies the machine (Host.machine_id).
        self.host = Host(
            address=pulumi.Output.from_input(args.host),
            instance_id=None,
            ssh_user=args.user,
            ssh_port=args.port,
            ssh_private_key=pulumi.Output.secret(private_text),
            ssh_key_path=str(key_path),
            gpu=args.gpu,
            machine_type=None,
            hourly_cost_usd=None,
            ready=[self],
        )
        self.register_outputs({"address": self.host.address})


def build_host(settings: Settings) -> Host:
    stack = settings.stack
    return ExistingHost(
        NAME,
        ExistingHostArgs(
            host=stack.ssh_host,
            user=stack.ssh_user or DEFAULT_SSH_USER,
            key_path=stack.ssh_private_key_path,
            port=stack.ssh_port,
            gpu=stack.gpu or None,
        ),
    ).host


def build_fleet(settings: Settings, url_secret: pulumi.Output[str]) -> Fleet:
    # Config validation refuses replicas on the ssh stack already; this is the backstop.
    raise ConfigError("replicas need a cloud stack (gcp or aws): an existing host has no load balancer")
