"""The SSH runner's pieces that need no server, and the deploy CLI over a fake library."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import paramiko
import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from bootstrap import cli_deploy
from bootstrap.api import DeployResult, SshTarget
from bootstrap.ssh import (
    CommandError,
    Connection,
    RunResult,
    SshAuthError,
    SshTimeoutError,
    _RecordNewHostKey,
    known_hosts_name,
    load_private_key,
)


def openssh_key() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


def test_known_hosts_names_follow_openssh() -> None:
    assert known_hosts_name("203.0.113.7", 22) == "203.0.113.7"
    assert known_hosts_name("203.0.113.7", 2222) == "[203.0.113.7]:2222"


def test_key_from_file_and_from_text(tmp_path: Path) -> None:
    pem = openssh_key()
    path = tmp_path / "id_ed25519"
    path.write_text(pem)
    from_file = load_private_key(SshTarget("h", "u", key_path=path))
    from_text = load_private_key(SshTarget("h", "u", key_pem=pem))
    assert from_file.get_fingerprint() == from_text.get_fingerprint()


def test_bad_or_missing_key_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SshAuthError, match="--key"):
        load_private_key(SshTarget("h", "u"))
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    with pytest.raises(SshAuthError, match="--key"):
        load_private_key(SshTarget("h", "u", key_path=bad))


def test_first_contact_records_the_host_key(tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    key = paramiko.Ed25519Key.from_private_key(__import__("io").StringIO(openssh_key()))
    _RecordNewHostKey(known).missing_host_key(paramiko.SSHClient(), "[10.0.0.2]:2222", key)
    recorded = paramiko.HostKeys(str(known))
    assert recorded.lookup("[10.0.0.2]:2222")["ssh-ed25519"] == key


def test_wrap_uses_sudo_only_for_other_users() -> None:
    root = Connection(paramiko.SSHClient(), SshTarget("h", "root"))
    user = Connection(paramiko.SSHClient(), SshTarget("h", "ubuntu"))
    assert not root.wrap("id").startswith("sudo")
    assert user.wrap("id").startswith("sudo -n ")
    assert not user.wrap("id", sudo=False).startswith("sudo")
    assert "FOO='a b'" in root.wrap("echo $FOO", env={"FOO": "a b"})


def test_run_result_check() -> None:
    assert RunResult("true", 0, "", "").check().ok
    with pytest.raises(CommandError, match=r"(?s)exit 3.*boom"):
        RunResult("false", 3, "", "boom").check()


def test_waiting_for_ssh_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lines: list[str] = []
    target = SshTarget("127.0.0.1", "root", key_pem=openssh_key(), port=port, known_hosts=tmp_path / "kh")
    started = time.monotonic()
    with pytest.raises(SshTimeoutError, match="no SSH on 127.0.0.1.*firewall"):
        Connection.open(target, wait_timeout_s=2.5, status=lines.append)
    assert time.monotonic() - started < 10
    assert lines and all("waiting for SSH" in line for line in lines)
    assert len(lines) >= 2  # retried with backoff, saying so each time


# ------------------------------------------------------------------- CLI
def make_app() -> typer.Typer:
    app = typer.Typer()
    app.command("deploy")(cli_deploy.deploy)
    app.command("undeploy")(cli_deploy.undeploy)
    return app


FAKE = DeployResult(
    endpoints={"synthdet": "https://203.0.113.7/s3cr3ts3cr3ts3cr3t/predictions/synthdet"},
    endpoint="https://203.0.113.7/s3cr3ts3cr3ts3cr3t/predictions/synthdet",
    cert_sha256="AB:CD",
    changed=True,
    public_address="203.0.113.7",
    steps=[("packages", True)],
    host={"gpu": None},
)


def test_cli_deploy_builds_the_calls_and_prints_json_last(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = {}

    def fake_deploy(target, models, options, progress):  # type: ignore[no-untyped-def]
        seen.update(target=target, models=models, options=options)
        progress.step_done("packages", True, "installed nginx")
        return FAKE

    monkeypatch.setattr(cli_deploy.deploy_lib, "deploy", fake_deploy)
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    result = CliRunner().invoke(
        make_app(),
        [
            "deploy",
            "--host",
            "203.0.113.7",
            "--user",
            "ubuntu",
            "--key",
            str(tmp_path / "k"),
            "--model",
            str(ckpt),
            "--model",
            f"other={ckpt}",
            "--public-port",
            "8443",
            "--pip-find-links",
            "http://10.0.0.1:8000/",
            "--pip-trusted-host",
            "10.0.0.1",
            "--workers",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["endpoint"] == FAKE.endpoint and last["cert_sha256"] == "AB:CD"
    assert seen["target"].user == "ubuntu" and seen["target"].host == "203.0.113.7"
    assert [m.name for m in seen["models"]] == ["synthdet", "other"]
    options = seen["options"]
    assert options.public_port == 8443 and options.serving.workers == 2
    assert options.pip.find_links == "http://10.0.0.1:8000/"
    assert options.pip.trusted_hosts == ("10.0.0.1",)


def test_cli_deploy_errors_exit_1_with_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SshAuthError("root@h:22 refused the key. Check --user and --key.")

    monkeypatch.setattr(cli_deploy.deploy_lib, "deploy", failing)
    result = CliRunner().invoke(make_app(), ["deploy", "--host", "h", "--model", "x.pth"])
    assert result.exit_code == 1
    assert "Check --user and --key" in result.output
