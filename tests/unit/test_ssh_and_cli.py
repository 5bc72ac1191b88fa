"""The SSH runner's pieces that need no server, and the deploy CLI over a fake library."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import paramiko
import pytest
import typer
from typer.testing import CliRunner

from bootstrap.api import DeployResult, SshTarget
from bootstrap.runner import CommandError, RunResult, command_argv, command_line
from bootstrap.ssh import (
    Connection,
    SshAuthError,
    SshTimeoutError,
    _RecordNewHostKey,
    known_hosts_name,
    load_private_key,
)
from synthdet.commands import deploy as deploy_commands
from tests.support.keys import openssh_private_key


def test_known_hosts_names_follow_openssh() -> None:
    assert known_hosts_name("203.0.113.7", 22) == "203.0.113.7"
    assert known_hosts_name("203.0.113.7", 2222) == "[203.0.113.7]:2222"


def test_key_from_file_and_from_text(tmp_path: Path) -> None:
    pem = openssh_private_key()
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
    key = paramiko.Ed25519Key.from_private_key(__import__("io").StringIO(openssh_private_key()))
    _RecordNewHostKey(known).missing_host_key(paramiko.SSHClient(), "[10.0.0.2]:2222", key)
    recorded = paramiko.HostKeys(str(known))
    assert recorded.lookup("[10.0.0.2]:2222")["ssh-ed25519"] == key


def test_commands_use_sudo_only_for_other_users() -> None:
    assert Connection(paramiko.SSHClient(), SshTarget("h", "root")).is_root
    assert not Connection(paramiko.SSHClient(), SshTarget("h", "ubuntu")).is_root
    assert command_argv("id", sudo=True, is_root=True) == ["env", "LC_ALL=C", "sh", "-c", "id"]
    assert command_line("id", sudo=True, is_root=False).startswith("sudo -n env LC_ALL=C sh -c id")
    assert not command_line("id", sudo=False, is_root=False).startswith("sudo")
    assert "'FOO=a b'" in command_line("echo $FOO", sudo=True, is_root=True, env={"FOO": "a b"})


def test_run_result_check() -> None:
    assert RunResult("true", 0, "", "").check().ok
    with pytest.raises(CommandError, match=r"(?s)exit 3.*boom"):
        RunResult("false", 3, "", "boom").check()


def test_waiting_for_ssh_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lines: list[str] = []
    target = SshTarget(
        "127.0.0.1", "root", key_pem=openssh_private_key(), port=port, known_hosts=tmp_path / "kh"
    )
    started = time.monotonic()
    with pytest.raises(SshTimeoutError, match="no SSH on 127.0.0.1.*firewall"):
        Connection.open(target, wait_timeout_s=2.5, status=lines.append)
    assert time.monotonic() - started < 10
    assert lines and all("waiting for SSH" in line for line in lines)
    assert len(lines) >= 2  # retried with backoff, saying so each time


# ------------------------------------------------------------------- CLI
def make_app() -> typer.Typer:
    app = typer.Typer()
    app.command("deploy")(deploy_commands.deploy)
    app.command("undeploy")(deploy_commands.undeploy)
    return app


LONG_URL = (
    "https://gpu-server-in-a-long-domain.example.org:8443/s3cr3ts3cr3ts3cr3ts3cr3t/predictions/synthdet"
)
FINGERPRINT = ":".join(["AB"] * 32)  # 95 characters, as a real SHA-256 fingerprint
FAKE = DeployResult(
    endpoints={"synthdet": LONG_URL},
    endpoint=LONG_URL,
    cert_sha256=FINGERPRINT,
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

    monkeypatch.setattr(deploy_commands.deploy_lib, "deploy", fake_deploy)
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
    assert last["endpoint"] == FAKE.endpoint and last["cert_sha256"] == FINGERPRINT
    # Piped output (not a terminal) is never wrapped: URLs and fingerprints copy whole.
    assert f"Certificate SHA-256: {FINGERPRINT}" in result.stderr.splitlines()
    assert f"Endpoint: {LONG_URL}" in result.stderr.splitlines()
    assert seen["target"].user == "ubuntu" and seen["target"].host == "203.0.113.7"
    assert [m.name for m in seen["models"]] == ["synthdet", "other"]
    options = seen["options"]
    assert options.public_port == 8443 and options.serving.workers == 2
    assert options.pip.find_links == "http://10.0.0.1:8000/"
    assert options.pip.trusted_hosts == ("10.0.0.1",)


def test_cli_deploy_errors_exit_1_with_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SshAuthError("root@h:22 refused the key. Check --user and --key.")

    monkeypatch.setattr(deploy_commands.deploy_lib, "deploy", failing)
    result = CliRunner().invoke(make_app(), ["deploy", "--host", "h", "--model", "x.pth"])
    assert result.exit_code == 1
    assert "Check --user and --key" in result.output
