"""`synthdet deploy` takes the URL secret from a file or the environment, not the command line.

The deploy library is replaced by a fake that records the options it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bootstrap.api import DeployResult
from synthdet.commands import deploy as deploy_commands

SECRET = "Zx9_kq-3vT0bL1mN2oP3qR4sT5uV6w"
RESULT = DeployResult(
    endpoints={"synthdet": "https://203.0.113.7/x/predictions/synthdet"},
    endpoint="https://203.0.113.7/x/predictions/synthdet",
    cert_sha256="AB:CD",
    changed=True,
    public_address="203.0.113.7",
    steps=[],
    host={},
)


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake_deploy(target, models, options, progress):  # type: ignore[no-untyped-def]
        seen["options"] = options
        return RESULT

    monkeypatch.setattr(deploy_commands.deploy_lib, "deploy", fake_deploy)
    monkeypatch.delenv("SYNTHDET_URL_SECRET", raising=False)
    return seen


def deploy(tmp_path: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    app = typer.Typer()
    app.command("deploy")(deploy_commands.deploy)
    app.command("undeploy")(deploy_commands.undeploy)
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    argv = ["deploy", "--host", "203.0.113.7", "--model", str(ckpt), "--no-smoke", *args]
    return CliRunner().invoke(app, argv, env=env, input=stdin)


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "url-secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_from_a_private_file(tmp_path: Path, deployed: dict[str, Any]) -> None:
    path = secret_file(tmp_path, SECRET + "\n")
    result = deploy(tmp_path, "--url-secret-file", str(path))
    assert result.exit_code == 0, result.output
    assert deployed["options"].url_secret == SECRET
    assert "warning" not in result.output


def test_a_file_others_can_read_is_used_with_a_warning(tmp_path: Path, deployed: dict[str, Any]) -> None:
    path = secret_file(tmp_path, SECRET, mode=0o644)
    result = deploy(tmp_path, "--url-secret-file", str(path))
    assert result.exit_code == 0, result.output
    assert deployed["options"].url_secret == SECRET
    assert "can be read by other users (mode 0644)" in result.output


def test_from_stdin(tmp_path: Path, deployed: dict[str, Any]) -> None:
    result = deploy(tmp_path, "--url-secret-file", "-", stdin=SECRET + "\n")
    assert result.exit_code == 0, result.output
    assert deployed["options"].url_secret == SECRET


def test_from_the_environment(tmp_path: Path, deployed: dict[str, Any]) -> None:
    result = deploy(tmp_path, env={"SYNTHDET_URL_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    assert deployed["options"].url_secret == SECRET
    assert "warning" not in result.output


def test_on_the_command_line_it_still_works_but_warns(tmp_path: Path, deployed: dict[str, Any]) -> None:
    result = deploy(tmp_path, "--url-secret", SECRET)
    assert result.exit_code == 0, result.output
    assert deployed["options"].url_secret == SECRET
    assert "warning:" in result.output and "every local user can read" in result.output
    assert "--url-secret-file" in result.output and "SYNTHDET_URL_SECRET" in result.output


def test_none_given_keeps_the_hosts(tmp_path: Path, deployed: dict[str, Any]) -> None:
    result = deploy(tmp_path, env={"SYNTHDET_URL_SECRET": ""})
    assert result.exit_code == 0, result.output
    assert deployed["options"].url_secret is None


def test_two_ways_at_once_is_refused(tmp_path: Path, deployed: dict[str, Any]) -> None:
    path = secret_file(tmp_path, SECRET)
    result = deploy(tmp_path, "--url-secret-file", str(path), env={"SYNTHDET_URL_SECRET": SECRET})
    assert result.exit_code == 1
    assert "give it one way" in result.output
    assert "options" not in deployed


@pytest.mark.parametrize(
    "text", ["", "short\n", f"{SECRET}\n{SECRET}\n", "has a space in it, sixteen+\n", "ä" * 20]
)
def test_a_file_that_holds_no_usable_secret_is_refused(
    tmp_path: Path, deployed: dict[str, Any], text: str
) -> None:
    path = secret_file(tmp_path, text)
    result = deploy(tmp_path, "--url-secret-file", str(path))
    assert result.exit_code == 1, result.output
    assert f"the URL secret from --url-secret-file {path} must be one line of 16-128" in result.output
    assert "options" not in deployed


def test_a_missing_file_says_so(tmp_path: Path, deployed: dict[str, Any]) -> None:
    result = deploy(tmp_path, "--url-secret-file", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert f"cannot read the URL secret from {tmp_path / 'nope'}" in result.output
