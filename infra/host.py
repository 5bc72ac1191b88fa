"""The small description every host component returns, whatever the cloud.

Downstream (the bootstrap resource, the stack outputs) only reads a `Host`,
so adding a cloud means writing one component that fills one in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_tls as tls
from cryptography.hazmat.primitives import serialization

from infra.config import resolve_path


def config_dir() -> Path:
    """Where the program keeps files for the deployer: generated keys, per-host known_hosts."""
    return Path(os.environ.get("SYNTHDET_CONFIG_DIR") or Path.home() / ".config" / "synthdet")


def safe_file_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[-120:]


@dataclass(frozen=True)
class Host:
    """A reachable machine: where to SSH, as whom, with which key, and what it costs."""

    # The IP address or DNS name SSH and the endpoint use: a cloud VM's static public
    # IP; for an existing machine, the name or address configured (sshHost).
    address: pulumi.Output[str]
    # The cloud's id of the VM; None for an existing machine (no cloud made it).
    instance_id: pulumi.Output[str] | None
    ssh_user: str
    ssh_port: int
    # Secret: the private key (OpenSSH or PEM text) the bootstrap logs in with.
    ssh_private_key: pulumi.Output[str]
    # The key file (the user's, or the generated one written 0600 outside the checkout).
    ssh_key_path: str
    gpu: str | None
    machine_type: str | None
    # None: unknown (not in the price table) or not ours to pay (an existing host).
    hourly_cost_usd: float | None
    # What the bootstrap must wait for (the instance, its address association ...).
    ready: list[pulumi.Resource]
    # A known_hosts file of the instance's own (a new VM behind the same IP has new
    # host keys); None: the user's default file (an existing machine keeps its keys).
    known_hosts: pulumi.Output[str] | None = None
    # Where the cloud's own API finds the VM to read its state and start it (`synthdet wake`,
    # `synthdet status`): {"cloud": "gcp", "project", "zone", "name"} or {"cloud": "aws",
    # "region", "instance_id", "profile"}. None: no cloud VM of ours (an existing machine).
    cloud_vm: pulumi.Output[dict[str, str]] | None = None
    # Dollars per hour while the VM is stopped (disk and address); None: unknown or not ours.
    stopped_hourly_cost_usd: float | None = None

    @property
    def machine_id(self) -> pulumi.Output[str]:
        """What tells the bootstrap it is another machine: the cloud's instance id, else the
        SSH login `user@address:port` (an existing machine has no id of ours)."""
        if self.instance_id is not None:
            return self.instance_id
        return self.address.apply(lambda a: f"{self.ssh_user}@{a}:{self.ssh_port}")


@dataclass(frozen=True)
class SshKey:
    public_openssh: pulumi.Output[str]
    private_key: pulumi.Output[str]  # secret
    path: str  # the user's key file, or where the generated one is written


def generated_key_path() -> Path:
    return config_dir() / "keys" / safe_file_name(pulumi.get_project(), pulumi.get_stack()) / "id_ed25519"


def write_private_key(path: Path, pem: str) -> None:
    """Write a key 0600 (in a 0700 folder) from the first byte."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)  # an older file may have had another mode


def ssh_key(name: str, key_path: str, parent: pulumi.Resource) -> SshKey:
    """The user's key file if configured, else an ED25519 key kept (secret) in the state.

    A generated key is also written 0600 outside the working tree (never into
    the git checkout), so `ssh -i` works at once: see the `ssh_command` output.
    """
    if key_path:
        path = resolve_path(key_path)
        private_text, public_text = read_key_file(path)
        return SshKey(
            public_openssh=pulumi.Output.from_input(public_text),
            private_key=pulumi.Output.secret(private_text),
            path=str(path),
        )
    key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=parent))
    target = generated_key_path()

    def saved(pem: str) -> str:  # runs once the key is known (`pulumi up`, not a preview)
        write_private_key(target, pem)
        return pem

    return SshKey(
        public_openssh=key.public_key_openssh.apply(str.strip),
        private_key=pulumi.Output.secret(key.private_key_openssh.apply(saved)),
        path=str(target),
    )


def instance_known_hosts(instance_id: pulumi.Output[str]) -> pulumi.Output[str]:
    """A known_hosts file per cloud instance: a replaced VM has new host keys."""
    return instance_id.apply(
        lambda i: str(
            config_dir() / "known_hosts.d" / safe_file_name(pulumi.get_project(), pulumi.get_stack(), i)
        )
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
