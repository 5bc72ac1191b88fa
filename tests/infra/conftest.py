"""Fixtures for the Pulumi program's mock tests (no cloud, no Pulumi CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.keys import openssh_private_key

DEPLOYER_IP = "198.51.100.7"


@pytest.fixture(autouse=True)
def deployer_ip(monkeypatch: pytest.MonkeyPatch) -> str:
    """`self` in sshAllowedCidrs resolves to this address instead of asking the internet."""
    import infra.network

    monkeypatch.setattr(infra.network, "my_public_ipv4", lambda timeout_s=5.0: DEPLOYER_IP)
    return DEPLOYER_IP


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Bytes standing in for a checkpoint: the program only hashes it."""
    path = tmp_path / "synthdet.pth"
    path.write_bytes(b"not really a checkpoint" * 1000)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text(openssh_private_key())
    return path


@pytest.fixture
def required(checkpoint: Path, key_file: Path):
    """What a user sets per stack (the model; for the ssh stack the host and key)."""

    def for_stack(stack: str) -> dict[str, str]:
        values = {"synthdet:model": str(checkpoint)}
        if stack == "ssh":
            values |= {"synthdet:sshHost": "192.0.2.50", "synthdet:sshPrivateKeyPath": str(key_file)}
        return values

    return for_stack


@pytest.fixture(autouse=True)
def config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Generated keys and per-instance known_hosts go here, not into the user's ~/.config."""
    folder = tmp_path / "synthdet-config"
    monkeypatch.setenv("SYNTHDET_CONFIG_DIR", str(folder))
    return folder
