"""`synthdet cache list` / `clear`: what the cache holds, removed by kind, a running server's
files left alone. On a cache laid out as synthdet lays it out (README: "Files it keeps")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.models import ModelSpec
from synthdet.cli import app
from synthdet.local_serve import LocalServeConfig, ServeError, start_local_server, write_pid_file


def put(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SYNTHDET_CACHE", str(root))
    idle = put(root / "archives" / "1111111111111111" / "synthdet.mar", 1000)
    served = put(root / "archives" / "2222222222222222" / "synthdet.mar", 2000)
    put(root / "demo-untrained.pth", 500)
    put(root / "wheels" / "3333333333333333" / "synthdet_deploy-0.1.0-py3-none-any.whl", 100)
    put(root / "notes.txt", 10)
    # A server that ended with an error: its logs, a link to its archive, a stale pid file.
    stopped = root / "serve-8080"
    put(stopped / "logs" / "torchserve.out", 300)
    (stopped / "model-store").mkdir()
    (stopped / "model-store" / "synthdet.mar").symlink_to(idle)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (stopped / "synthdet-serve.pid").write_text(f"{gone.stdout.strip()} 1.0\n")
    # A server that runs (this process plays it): its folder and its archive are in use.
    running = root / "serve-9090"
    put(running / "logs" / "torchserve.out", 300)
    (running / "model-store").mkdir()
    (running / "model-store" / "synthdet.mar").symlink_to(served)
    write_pid_file(running)
    return root


def synthdet(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def kinds() -> dict[str, dict[str, int]]:
    code, out, _ = synthdet("cache", "list", "--json")
    assert code == 0
    return json.loads(out)["kinds"]


def test_list_counts_each_kind_and_its_size(cache: Path) -> None:
    found = kinds()
    assert found["archives"] == {"count": 2, "bytes": 3000, "in_use": 1}
    assert found["demo"] == {"count": 1, "bytes": 500, "in_use": 0}
    assert found["wheels"] == {"count": 1, "bytes": 100, "in_use": 0}
    assert found["other"] == {"count": 1, "bytes": 10, "in_use": 0}
    assert found["serve-logs"]["count"] == 2 and found["serve-logs"]["in_use"] == 1
    # Links are not followed: a serve folder does not count its archive twice.
    assert found["serve-logs"]["bytes"] < 1000
    code, out, err = synthdet("cache", "list")
    assert code == 0 and str(cache) in out and "serve-<port>/" in out and "(1 in use)" in out
    assert "synthdet cache clear" in err


def test_clear_serve_logs_leaves_a_running_server_alone(cache: Path) -> None:
    code, _, err = synthdet("cache", "clear", "--serve-logs")
    assert code == 0
    assert not (cache / "serve-8080").exists()
    assert (cache / "serve-9090" / "logs" / "torchserve.out").exists()
    assert f"kept {cache / 'serve-9090'}: a running synthdet serve uses it" in err
    assert kinds()["archives"]["count"] == 2 and (cache / "demo-untrained.pth").exists()


def test_clear_by_kind(cache: Path) -> None:
    assert synthdet("cache", "clear", "--demo")[0] == 0
    assert not (cache / "demo-untrained.pth").exists() and kinds()["archives"]["count"] == 2
    assert synthdet("cache", "clear", "--archives")[0] == 0
    # The archive the running server links to stays; the other goes.
    assert sorted(p.name for p in (cache / "archives").iterdir()) == ["2222222222222222"]
    assert (cache / "serve-8080").exists() and (cache / "wheels").exists()


@pytest.mark.parametrize("flags", [(), ("--all",)])
def test_clear_all_removes_everything_but_what_a_server_uses(cache: Path, flags: tuple[str, ...]) -> None:
    code, _, err = synthdet("cache", "clear", *flags)
    # An archive, the demo checkpoint, the wheel and the stopped server's folder. notes.txt is
    # not synthdet's (SYNTHDET_CACHE may name a folder with the user's own files): it stays.
    assert code == 0 and "removed 4 item(s)" in err
    left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.is_symlink())
    assert left == [
        "archives/2222222222222222/synthdet.mar",
        "notes.txt",
        "serve-9090/logs/torchserve.out",
        "serve-9090/model-store/synthdet.mar",
        "serve-9090/synthdet-serve.pid",
    ]


def test_an_empty_or_missing_cache_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHDET_CACHE", str(tmp_path / "never-made"))
    assert synthdet("cache", "clear")[0] == 0
    assert all(kind["count"] == 0 for kind in kinds().values())


def test_a_second_serve_leaves_a_running_servers_folder_alone(cache: Path) -> None:
    folder = cache / "serve-9090"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    config = LocalServeConfig(models=[ModelSpec("synthdet", Path("a.pth"))], workdir=folder, port=9090)
    with pytest.raises(ServeError, match="another synthdet serve is running in"):
        start_local_server(config)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
