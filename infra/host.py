"""The small description every host component returns, whatever the cloud.

Downstream (the bootstrap resource, the stack outputs) only reads a `Host`,
so adding a cloud means writing one component that fills one in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_tls as tls
from cryptography.hazmat.primitives import serialization

from infra.config import resolve_path


@dataclass(frozen=True)
class Host:
    """A reachable machine: where to SSH, as whom, with which key, and what it costs."""

    public_ip: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    ssh_user: str
    ssh_port: int
    # Secret: the private key (OpenSSH or PEM text) the bootstrap logs in with.
    ssh_private_key: pulumi.Output[str]
    # Where the key file is when the user brought one (for the ssh_command output).
    ssh_key_path: str | None
    gpu: str | None
    machine_type: str | None
    # None: unknown (not in the price table) or not ours to pay (an existing host).
    hourly_cost_usd: float | None
    # What the bootstrap must wait for (the instance, its address association ...).
    ready: list[pulumi.Resource]


@dataclass(frozen=True)
class SshKey:
    public_openssh: pulumi.Output[str]
    private_key: pulumi.Output[str]  # secret
    path: str | None  # the user's key file, or None when Pulumi generated it


def ssh_key(name: str, key_path: str, parent: pulumi.Resource) -> SshKey:
    """The user's key file if configured, else an ED25519 key kept (secret) in the state."""
    if key_path:
        path = resolve_path(key_path)
        private_text, public_text = read_key_file(path)
        return SshKey(
            public_openssh=pulumi.Output.from_input(public_text),
            private_key=pulumi.Output.secret(private_text),
            path=str(path),
        )
    key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=parent))
    # The provider marks private_key_* secret already; be explicit about it anyway.
    return SshKey(
        public_openssh=key.public_key_openssh.apply(str.strip),
        private_key=pulumi.Output.secret(key.private_key_openssh),
        path=None,
    )


def read_key_file(path: Path) -> tuple[str, str]:
    """(private key text, OpenSSH public key) from an unencrypted private key file."""
    text = Path(path).expanduser().read_text()
    data = text.encode()
    key: Any
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return text, public.decode()
