"""SSH that stays silent: after a while, one line says who the firewall admits and how to change it.

The host here is a loopback port that takes connections into its backlog and
never answers (like a port behind a firewall that drops packets, the SSH
banner never comes); the "while" is shortened for the test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bootstrap.ssh
from bootstrap.api import SshTarget
from bootstrap.ssh import Connection, SshTimeoutError
from infra.bootstrap_resource import BootstrapProvider
from tests.support.keys import openssh_private_key
from tests.support.pulumi_log import pulumi_log_on_stderr  # noqa: F401 - autouse fixture

HINT = (
    "the firewall admits SSH from 198.51.100.7/32 only (synthdet:sshAllowedCidrs 'self'); to admit another "
    "address: `pulumi config set --path 'synthdet:sshAllowedCidrs[0]' ADDRESS/32 --stack my-gcp-t4`"
)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Listens (the kernel completes the handshake) but never accepts nor speaks."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        yield server.getsockname()[1]


def silences(lines: list[str]) -> list[str]:
    return [line for line in lines if "has not answered for" in line]


def test_after_the_threshold_one_line_names_the_admitted_address_then_the_wait_goes_on(
    silent_port: int, tmp_path: Path
) -> None:
    target = SshTarget(
        "127.0.0.1",
        "ubuntu",
        key_pem=openssh_private_key(),
        port=silent_port,
        known_hosts=tmp_path / "known_hosts",
        firewall_hint=HINT,
    )
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(SshTimeoutError):
        Connection.open(
            target, wait_timeout_s=6.0, status=lines.append, connect_timeout_s=0.3, silent_warning_s=1.0
        )
    waited = time.monotonic() - started
    said = silences(lines)
    assert len(said) == 1, lines
    assert said[0].startswith(f"SSH on 127.0.0.1:{silent_port} has not answered for ")
    assert HINT in said[0] and said[0].endswith("still waiting (up to 6 s in all)")
    # It said so once the threshold had passed, and then kept trying until its own timeout.
    assert lines.index(said[0]) >= 1 and waited >= 6.0


def test_before_the_threshold_nothing_is_said(silent_port: int, tmp_path: Path) -> None:
    target = SshTarget(
        "127.0.0.1", "root", key_pem=openssh_private_key(), port=silent_port, known_hosts=tmp_path / "kh"
    )
    lines: list[str] = []
    with pytest.raises(SshTimeoutError):
        Connection.open(
            target, wait_timeout_s=2.0, status=lines.append, connect_timeout_s=0.3, silent_warning_s=30
        )
    assert lines and silences(lines) == []


def test_through_the_pulumi_bootstrap_resource_the_stacks_hint_is_said(
    silent_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unity_checkpoint: Path,
) -> None:
    """The program passes `ssh_hint` (infra/ssh_access.py) to the resource, which gives it to SSH."""
    monkeypatch.setattr(bootstrap.ssh, "SILENT_WARNING_S", 1.0)
    monkeypatch.setattr(bootstrap.ssh, "CONNECT_TIMEOUT_S", 0.3)
    from bootstrap.api import DeployOptions
    from serving.models import ModelSpec

    options = DeployOptions(ssh_wait_timeout_s=6.0).to_dict()
    props = {
        "host": "127.0.0.1",
        "port": silent_port,
        "user": "synthdet",
        "private_key": openssh_private_key(),
        "machine_id": "projects/p/zones/z/instances/synthdet-vm",
        "known_hosts": str(tmp_path / "kh"),
        "ssh_hint": HINT,
        "models": [ModelSpec.parse(str(unity_checkpoint)).to_dict()],
        "options": {k: v for k, v in options.items() if k != "url_secret"},
        "url_secret": "UrlSecretUrlSecretUrlSecret12345",
    }
    with pytest.raises(SshTimeoutError):
        BootstrapProvider().create(props)
    said = silences(capsys.readouterr().err.splitlines())
    assert len(said) == 1 and HINT in said[0]


def test_through_synthdet_deploy_a_generic_line_is_said(
    silent_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unity_checkpoint: Path
) -> None:
    """`synthdet deploy` knows no firewall of its own: the line says what to look at."""
    from synthdet.cli import app

    monkeypatch.setattr(bootstrap.ssh, "SILENT_WARNING_S", 1.0)
    monkeypatch.setattr(bootstrap.ssh, "CONNECT_TIMEOUT_S", 0.3)
    key = tmp_path / "id_ed25519"
    key.write_text(openssh_private_key())
    result = CliRunner().invoke(
        app,
        [
            "deploy",
            "--host", "127.0.0.1",
            "--port", str(silent_port),
            "--key", str(key),
            "--model", str(unity_checkpoint),
            "--known-hosts", str(tmp_path / "kh"),
            "--ssh-wait", "6",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    flat = " ".join(result.output.split())  # rich wraps long lines
    assert f"SSH on 127.0.0.1:{silent_port} has not answered for" in flat
    assert "admits SSH from this machine's public address" in flat
