"""The `synthdet` command as a user runs it, in subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import zxingcpp
from PIL import Image

from serving.contract import make_test_jpeg, parse_like_app
from serving.polling import retry
from synthdet.local_serve import free_port
from tests.support.slow_endpoint import endpoint

pytestmark = pytest.mark.integration
SYNTHDET = [sys.executable, "-m", "synthdet.cli"]


def run(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SYNTHDET, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_every_command() -> None:
    result = run("--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    for command in (
        "serve",
        "deploy",
        "undeploy",
        "archive",
        "predict",
        "qr",
        "smoke",
        "demo-model",
        "doctor",
    ):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["serve", "deploy", "undeploy", "qr", "doctor", "bench"])
def test_help_shows_no_type_for_flags(command: str) -> None:
    """A flag takes no value: `--once`, not `--once <bool>`."""
    result = run(command, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "<bool>" not in result.stdout
    assert "--help" in result.stdout


def test_serve_without_a_model_refuses_helpfully() -> None:
    result = run("serve")
    assert result.returncode != 0
    assert "--model" in result.stderr and "--demo-model" in result.stderr


def test_qr_png_decodes_to_the_url(tmp_path: Path) -> None:
    url = "https://203.0.113.7:8443/predictions/synthdet"
    result = run("qr", url, "--png", str(tmp_path / "qr.png"))
    assert result.returncode == 0 and "\u2580" in result.stdout
    assert zxingcpp.read_barcodes(Image.open(tmp_path / "qr.png"))[0].text == url


def test_predict_in_process_draws_boxes(unity_checkpoint: Path, tmp_path: Path) -> None:
    image = tmp_path / "frame.jpg"
    image.write_bytes(make_test_jpeg(640, 480, seed=4))
    result = run(
        "predict", str(image), "--model", str(unity_checkpoint), "--out", str(tmp_path / "boxes.png")
    )
    assert result.returncode == 0, result.stderr
    detections = parse_like_app(result.stdout)
    assert detections
    assert Image.open(tmp_path / "boxes.png").size == (640, 480)
    # TorchServe's import-time notes about backends nobody asked for stay out of the way.
    for noise in ("OpenVINO", "onnxruntime", "TensorRT"):
        assert noise not in result.stderr
    # The same answer from an endpoint (sent compact, as servers do) prints the same bytes.
    answer = json.loads(result.stdout)
    assert result.stdout == json.dumps(answer, indent=2) + "\n"
    with endpoint(json.dumps(answer, separators=(",", ":")).encode()) as url:
        remote = run("predict", str(image), "--url", f"{url}/predictions/synthdet")
        compact = run("predict", str(image), "--url", f"{url}/predictions/synthdet", "--compact")
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == result.stdout
    assert compact.stdout == json.dumps(answer) + "\n"


def test_predict_refuses_a_non_image(unity_checkpoint: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a picture")
    result = run("predict", str(bogus), "--model", str(unity_checkpoint))
    assert result.returncode == 1 and "415" in result.stderr


def test_demo_model_warns_that_it_is_untrained(tmp_path: Path) -> None:
    result = run("demo-model", "--out", str(tmp_path / "demo.pth"), "--num-classes", "5")
    assert result.returncode == 0 and "UNTRAINED" in result.stderr
    assert (tmp_path / "demo.pth").stat().st_size > 1_000_000


def test_doctor_measures_this_machine_and_gives_a_verdict() -> None:
    result = run("doctor", env={"COLUMNS": "200"})
    assert "READY" in result.stdout
    assert "Java" in result.stdout and "TorchServe" in result.stdout
    # The speed is measured here, not quoted: the verdict names the number it found.
    measured = re.search(r"one 1280x960 frame\s+(\d+) ms on the (CPU|GPU) \(measured now\)", result.stdout)
    assert measured, result.stdout
    assert f"{measured.group(1)} ms per frame here" in result.stdout


def test_smoke_fails_on_a_dead_endpoint() -> None:
    result = run("smoke", f"http://127.0.0.1:{free_port()}/predictions/synthdet", "--timeout", "3", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is False


class _NotYet(Exception):
    pass


def _wait_for(path: Path, text: str, process: subprocess.Popen[str], timeout: float) -> None:
    """Until `text` shows in the log at `path`; a process that exits first fails at once."""

    def seen() -> None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert process.poll() is None, path.read_text(errors="replace")
        raise _NotYet

    try:
        retry(seen, timeout_s=timeout, every_s=0.5, when=_NotYet)
    except _NotYet:
        raise AssertionError(
            f"{text!r} not seen in {timeout} s:\n{path.read_text(errors='replace')}"
        ) from None


def test_serve_https_two_models_then_ctrl_c_leaves_nothing_behind(
    unity_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    workdir = Path(os.environ["SYNTHDET_CACHE"]) / f"serve-{port}"  # the default: in the cache
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr_file:
        # Started the way a script's `synthdet serve &` starts it: SIGINT ignored on the way in.
        process = subprocess.Popen(
            [
                *SYNTHDET,
                "serve",
                "--model",
                str(unity_checkpoint),
                "--model",
                f"other={other_checkpoint}",
                "--port",
                str(port),
                "--https",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            _wait_for(err, "Press Ctrl-C", process, timeout=300)
            assert (workdir / "logs" / "torchserve.out").is_file()
            served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port)))
            family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            assert any("java" in " ".join(p.cmdline()) for p in family)
            for model in ("synthdet", "other"):
                response = httpx.post(
                    f"https://127.0.0.1:{port}/predictions/{model}",
                    content=make_test_jpeg(320, 240),
                    headers={"Content-Type": "image/jpg"},
                    verify=False,
                    timeout=60,
                )
                assert response.status_code == 200
                parse_like_app(response.content)
            stopping = time.monotonic()
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
            assert time.monotonic() - stopping < 20, "SIGINT was not acted on at once"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    stdout = process.stdout.read() if process.stdout else ""
    assert f"https://127.0.0.1:{port}/predictions/synthdet" in stdout
    assert f"https://127.0.0.1:{port}/predictions/other" in stdout
    said = err.read_text()
    # The fingerprint of the certificate it served, as deploy prints one.
    fingerprint = ":".join(f"{byte:02X}" for byte in hashlib.sha256(served).digest())
    assert f"Certificate SHA-256: {fingerprint}" in said
    # --https was given: the phone hint names only what is missing.
    assert "(a phone's browser needs --host 0.0.0.0 for its camera)" in said
    # A clean stop leaves no work folder behind.
    assert not workdir.exists()
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{port}/ping", verify=False, timeout=5)


def test_serve_keeps_its_logs_when_asked_and_says_nothing_is_missing_for_a_phone(
    unity_checkpoint: Path,
) -> None:
    port = free_port()
    result = run(
        "serve",
        "--model",
        str(unity_checkpoint),
        "--port",
        str(port),
        "--host",
        "0.0.0.0",
        "--https",
        "--once",
        "--keep-logs",
    )
    assert result.returncode == 0, result.stderr
    workdir = Path(os.environ["SYNTHDET_CACHE"]) / f"serve-{port}"
    assert (workdir / "logs" / "torchserve.out").stat().st_size > 0
    assert f"logs kept in {workdir / 'logs'}" in result.stderr
    assert "Certificate SHA-256: " in result.stderr
    assert "a phone's browser needs" not in result.stderr


def test_serve_that_fails_keeps_its_logs_and_says_where(unity_checkpoint: Path) -> None:
    port = free_port()
    # Models never load within a second: TorchServe has started, and written its log, by then.
    result = run("serve", "--model", str(unity_checkpoint), "--port", str(port), "--timeout", "1")
    assert result.returncode == 1
    workdir = Path(os.environ["SYNTHDET_CACHE"]) / f"serve-{port}"
    assert "not ready after 1 s" in result.stderr
    assert f"logs kept in {workdir / 'logs'}" in result.stderr
    assert (workdir / "logs" / "torchserve.out").is_file()
