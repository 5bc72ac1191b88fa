"""`synthdet deploy` against a real systemd test host, checked from outside like the app.

One host is deployed once (through the CLI, as a user would, logged in the way GCP logs
you in: the non-root `synthdet` user with passwordless sudo) and shared by the tests of
this module, which run in file order and each leave it deployed and serving; the reboot
and undeploy tests come last. CPU inference in the guest takes ~3 s an image.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paramiko
import pytest

from bootstrap import deploy as deploy_lib
from bootstrap import ssh as ssh_module
from bootstrap.api import DeployOptions, DeployResult, SshTarget
from bootstrap.files import UploadVerificationError
from bootstrap.runner import copy_stream
from bootstrap.ssh import Connection, HostKeyChangedError, SshError
from bootstrap.steps.base import (
    INFERENCE_PORT,
    MANAGEMENT_PORT,
    METRICS_PORT,
    MODEL_STORE,
    SERVICE_USER,
    UNIT_NAME,
)
from serving.contract import make_test_jpeg, parse_like_app, post_image, smoke
from serving.models import ModelSpec
from synthdet.demo_model import write_demo_checkpoint
from tests.support import testhost as th
from tests.support.deployment import (
    cli_deploy,
    guest,
    host_tree,
    management,
    require_test_hosts,
    served_sha,
    service_pids,
    wait_serving,
    wheelhouse_pip,
)
from tests.support.keys import openssh_private_key

pytestmark = pytest.mark.system


@dataclass
class Deployed:
    info: th.TestHostInfo
    target: SshTarget
    options: DeployOptions
    result: dict[str, object]  # the CLI's --json line
    qr_png: Path
    first_deploy_s: float
    tree_before: set[str]  # the host's files before the deploy (host_tree)

    @property
    def endpoint(self) -> str:
        return str(self.result["endpoint"])


@pytest.fixture(scope="module")
def host() -> Iterator[th.TestHostInfo]:
    require_test_hosts()
    name = f"sdd-{os.getpid()}"
    info = th.up(name)  # GCP's login: the non-root `synthdet` with passwordless sudo
    assert info.user == "synthdet"
    try:
        yield info
    finally:
        th.down(name)


@pytest.fixture(scope="module")
def deployed(
    host: th.TestHostInfo, unity_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployed:
    work = tmp_path_factory.mktemp("deploy")
    known_hosts = work / "known_hosts"
    tree_before = host_tree(host)
    qr_png = work / "qr.png"
    args = [
        "--host",
        host.host,
        "--user",
        host.user,
        "--key",
        host.key,
        "--port",
        str(host.port),
        "--known-hosts",
        str(known_hosts),
        "--model",
        str(unity_checkpoint),
        "--qr-png",
        str(qr_png),
        "--json",
        *host.deploy_args,
    ]
    _, result, elapsed = cli_deploy(args)
    print(f"first deploy: {elapsed:.1f} s")
    target = SshTarget(host.host, host.user, Path(host.key), port=host.port, known_hosts=known_hosts)
    options = DeployOptions(pip=wheelhouse_pip(host))
    return Deployed(host, target, options, result, qr_png, elapsed, tree_before)


def redeploy(d: Deployed, models: list[ModelSpec]) -> tuple[DeployResult, float]:
    started = time.monotonic()
    result = deploy_lib.deploy(d.target, models, d.options)
    return result, time.monotonic() - started


# ------------------------------------------------------------------ the app's view
def test_json_result_and_qr_payload_is_the_working_url(deployed: Deployed) -> None:
    import zxingcpp
    from PIL import Image

    result = deployed.result
    assert set(result) >= {"endpoint", "endpoints", "cert_sha256", "changed", "public_ip"}
    assert result["endpoints"] == {"synthdet": deployed.endpoint}
    decoded = zxingcpp.read_barcodes(Image.open(deployed.qr_png))
    assert [code.text for code in decoded] == [deployed.endpoint]
    # The decoded payload is what the app stores and POSTs to, unchanged.
    response = post_image(decoded[0].text, make_test_jpeg(), timeout_s=60)
    assert response.status_code == 200, response.text
    assert isinstance(parse_like_app(response.content), list)


def test_certificate_fingerprint_matches_what_the_server_presents(deployed: Deployed) -> None:
    import ssl

    from serving.certs import fingerprint_sha256

    pem = ssl.get_server_certificate((deployed.info.host, 443)).encode()
    assert fingerprint_sha256(pem) == deployed.result["cert_sha256"]


@pytest.mark.parametrize("size", [(1280, 960), (1280, 590)])
def test_app_style_requests_over_https(deployed: Deployed, size: tuple[int, int]) -> None:
    image = make_test_jpeg(*size)
    result = smoke(deployed.endpoint, image=image, timeout_s=60)  # checks boxes in frame
    assert result.status == 200


def test_url_is_well_formed_for_the_app(deployed: Deployed) -> None:
    url = httpx.URL(deployed.endpoint)
    assert url.scheme == "https" and url.port is None  # :443 omitted
    secret = url.path.split("/")[1]
    assert len(secret) >= 24 and all(c.isalnum() or c in "-_" for c in secret)


# ---------------------------------------------------------------- access control
def test_wrong_or_missing_secret_is_404(deployed: Deployed) -> None:
    url = httpx.URL(deployed.endpoint)
    secret = url.path.split("/")[1]
    base = f"https://{deployed.info.host}"
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    image = make_test_jpeg(320, 240)
    for path in [
        "/predictions/synthdet",
        f"/{wrong}/predictions/synthdet",
        f"/predictions/synthdet?secret={secret}",
        "/ping",
        "/models",
        "/metrics",
        "/",
        f"/{secret}/predictions/not-deployed",
        f"/{secret}/models",
    ]:
        response = post_image(base + path, image, timeout_s=10)
        assert response.status_code == 404, f"{path}: {response.status_code}"
    # The right secret with a method that neither predicts nor shows the viewer is refused.
    with httpx.Client(verify=False, timeout=10) as client:
        for method in ("DELETE", "PATCH", "OPTIONS"):
            refused = client.request(method, deployed.endpoint)
            assert refused.status_code == 405 and refused.json()["code"] == 405, method
        assert client.get(f"{base}/{secret}/ping").status_code == 200


def test_a_browser_gets_the_viewer_page_and_a_missing_secret_still_404s(deployed: Deployed) -> None:
    with httpx.Client(verify=False, timeout=10) as client:
        page = client.get(deployed.endpoint)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<title>SynthDet live viewer</title>" in page.text
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert client.get(f"https://{deployed.info.host}/predictions/synthdet").status_code == 404
        assert client.get(f"https://{deployed.info.host}/synthdet-viewer").status_code == 404  # internal


@pytest.mark.parametrize(
    "how",
    [
        ["--data-binary", "@{image}"],
        ["-T", "{image}"],
        ["-X", "POST", "--data-binary", "@{image}", "-H", "Content-Type:"],
    ],
    ids=["data-binary (a form label)", "upload-file (PUT)", "no content-type"],
)
def test_what_people_type_with_curl_is_served(deployed: Deployed, tmp_path: Path, how: list[str]) -> None:
    image = tmp_path / "img.jpg"
    image.write_bytes(make_test_jpeg(640, 480, seed=41))
    args = [arg.format(image=image) for arg in how]
    result = subprocess.run(
        ["curl", "-sk", "-w", "\n%{http_code}", *args, deployed.endpoint],
        capture_output=True,
        text=True,
        timeout=120,
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", (status, body, result.stderr)
    assert isinstance(parse_like_app(body), list)


def test_missing_content_type_is_not_a_torchserve_500(deployed: Deployed) -> None:
    with httpx.Client(verify=False, timeout=60) as client:
        response = client.post(deployed.endpoint, content=make_test_jpeg(640, 480))
    assert response.status_code == 200, response.text


def test_torchserve_ports_are_not_reachable_from_outside(deployed: Deployed) -> None:
    info = deployed.info
    # Inside, TorchServe listens, but only on loopback.
    listening = guest(info, "ss -ltnH")
    for port in (INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT):
        lines = [ln for ln in listening.splitlines() if f":{port} " in ln]
        assert lines, f"nothing listens on {port} in the guest:\n{listening}"
        # Java shows IPv4 loopback as [::ffff:127.0.0.1]; either way, loopback only.
        assert all(ln.split()[3].rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1") for ln in lines), lines
    # Outside, only 22 and 443 answer.
    for port in (80, 8080, 8081, 8082, INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT):
        with socket.socket() as sock:
            sock.settimeout(3)
            assert sock.connect_ex((info.host, port)) != 0, f"port {port} is open"


def test_changed_host_key_is_refused(deployed: Deployed, tmp_path: Path) -> None:
    forged = tmp_path / "known_hosts"
    keys = paramiko.HostKeys()
    keys.add(deployed.info.host, "ssh-ed25519", _other_key())
    keys.save(str(forged))
    target = SshTarget(deployed.info.host, deployed.info.user, Path(deployed.info.key), known_hosts=forged)
    with pytest.raises(HostKeyChangedError, match="ssh-keygen -R"):
        Connection.open(target, wait_timeout_s=5)


def _other_key() -> paramiko.PKey:
    """A fresh ed25519 key: what a man in the middle (or a rebuilt host) would present."""
    return paramiko.Ed25519Key.from_private_key(io.StringIO(openssh_private_key()))


def test_a_cpu_host_serves_one_frame_per_pass_with_a_short_queue(deployed: Deployed) -> None:
    """The test host has no GPU: TorchServe itself says batch 1, and the queue is its workers."""
    described = management(deployed.info, "/models/synthdet")
    assert isinstance(described, list)
    assert (described[0]["batchSize"], described[0]["maxBatchDelay"]) == (1, 5)
    workers = 1  # one worker on a CPU (its threads are the physical cores)
    assert len(described[0]["workers"]) == workers
    config = guest(deployed.info, "cat /etc/synthdet/config.properties").splitlines()
    assert f"job_queue_size={workers}" in config


# ------------------------------------------------------------------ idempotence
def test_rerun_is_a_quick_no_op(deployed: Deployed, unity_checkpoint: Path) -> None:
    before = service_pids(deployed.info)
    result, elapsed = redeploy(deployed, [ModelSpec("synthdet", unity_checkpoint)])
    print(f"rerun (no-op): {elapsed:.1f} s")
    assert not result.changed, result.steps
    assert all(not changed for _, changed in result.steps)
    assert result.endpoint == deployed.endpoint
    assert result.cert_sha256 == deployed.result["cert_sha256"]
    assert service_pids(deployed.info) == before


def test_kill_9_of_torchserve_is_healed(deployed: Deployed) -> None:
    info = deployed.info
    _, java = service_pids(info)
    restarts = int(guest(info, f"systemctl show -p NRestarts --value {UNIT_NAME}"))
    guest(info, f"kill -9 {java}")
    healed_s = wait_serving(deployed.endpoint)
    print(f"kill -9 healed in {healed_s:.1f} s")
    assert int(guest(info, f"systemctl show -p NRestarts --value {UNIT_NAME}")) > restarts
    assert service_pids(info)[1] != java


# ---------------------------------------------------------------- model updates
def test_dropped_connection_then_rerun_converges_with_only_a_model_reload(
    deployed: Deployed, other_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = deployed.info
    old_sha = served_sha(info)
    pids = service_pids(info)

    def dropping_copy(source, write, on_sent=None):  # type: ignore[no-untyped-def]
        def cut(sent: int) -> None:
            if sent > 8 * 2**20:  # the network goes away mid-upload
                write.__self__.get_transport().close()
            if on_sent:
                on_sent(sent)

        return copy_stream(source, write, cut)

    monkeypatch.setattr(ssh_module, "copy_stream", dropping_copy)
    with pytest.raises(SshError):
        redeploy(deployed, [ModelSpec("synthdet", other_checkpoint)])
    monkeypatch.setattr(ssh_module, "copy_stream", copy_stream)
    # The half-sent archive was never moved into place: the old model still serves.
    assert served_sha(info) == old_sha
    smoke(deployed.endpoint, timeout_s=60)

    result, elapsed = redeploy(deployed, [ModelSpec("synthdet", other_checkpoint)])
    print(f"model change after a dropped connection: {elapsed:.1f} s")
    steps = dict(result.steps)
    assert steps["upload-model"] and steps["torchserve"]
    assert served_sha(info) != old_sha
    assert service_pids(info) == pids, "a model change must not restart TorchServe"
    assert guest(info, f"ls -A {MODEL_STORE}").split() == ["synthdet.mar"]  # no partials
    smoke(result.endpoint, timeout_s=60)


class SlowArchive:
    """A file that pauses half-way, so a test can look at the host mid-upload."""

    def __init__(self, path: Path, halfway: threading.Event, resume: threading.Event) -> None:
        self.stream = path.open("rb")
        self.name = path.name
        self.size = path.stat().st_size
        self.halfway, self.resume = halfway, resume

    def read(self, n: int) -> bytes:
        if self.stream.tell() >= self.size // 2 and not self.halfway.is_set():
            self.halfway.set()
            assert self.resume.wait(60)
        return self.stream.read(n)


def test_files_in_flight_are_private_to_root_even_through_a_sudo_login(
    deployed: Deployed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an archive streams in through `sudo`, its temporary is root's and 0600."""
    info = deployed.info
    checkpoint = write_demo_checkpoint(tmp_path / "fourth.pth", seed=3)
    halfway, resume = threading.Event(), threading.Event()
    real_copy = copy_stream

    def slow_copy(source, write, on_sent=None):  # type: ignore[no-untyped-def]
        name = getattr(source, "name", "")
        return real_copy(
            SlowArchive(Path(name), halfway, resume) if str(name).endswith(".mar") else source, write, on_sent
        )

    monkeypatch.setattr(ssh_module, "copy_stream", slow_copy)
    worker = threading.Thread(target=redeploy, args=(deployed, [ModelSpec("synthdet", checkpoint)]))
    worker.start()
    try:
        assert halfway.wait(600), "the upload never got half-way"
        staged = guest(info, f"find {MODEL_STORE} /var/tmp /tmp /home -name '*.part-*' -printf '%u %m %p\\n'")
        lines = staged.strip().splitlines()
        assert lines and all(line.startswith("root 600 ") for line in lines), staged
        assert all(line.split()[2].startswith(f"{MODEL_STORE}/.synthdet.mar.part-") for line in lines), staged
    finally:
        resume.set()
        worker.join(600)
    smoke(deployed.endpoint, timeout_s=120)
    assert not guest(info, f"find {MODEL_STORE} -name '*.part-*'").strip()


def test_corrupted_upload_is_detected_and_never_served(
    deployed: Deployed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = deployed.info
    served = served_sha(info)
    checkpoint = write_demo_checkpoint(tmp_path / "third.pth", seed=2)

    def corrupting_copy(source, write, on_sent=None):  # type: ignore[no-untyped-def]
        flipped = False

        def flip(block: bytes) -> object:
            nonlocal flipped
            if str(getattr(source, "name", "")).endswith(".mar") and not flipped:
                block, flipped = b"X" + block[1:], True  # one byte of the archive, on the wire
            return write(block)

        return copy_stream(source, flip, on_sent)

    monkeypatch.setattr(ssh_module, "copy_stream", corrupting_copy)
    with pytest.raises(UploadVerificationError, match="corrupt"):
        redeploy(deployed, [ModelSpec("synthdet", checkpoint)])
    assert served_sha(info) == served
    assert guest(info, f"ls -A {MODEL_STORE}").split() == ["synthdet.mar"]
    smoke(deployed.endpoint, timeout_s=60)


def test_several_models_side_by_side_then_one_removed(
    deployed: Deployed, unity_checkpoint: Path, other_checkpoint: Path
) -> None:
    info = deployed.info
    pids = service_pids(info)
    both = [ModelSpec("synthdet", other_checkpoint), ModelSpec("second", unity_checkpoint)]
    result, _ = redeploy(deployed, both)
    assert set(result.endpoints) == {"synthdet", "second"}
    assert result.endpoints["second"] != result.endpoints["synthdet"]
    for url in result.endpoints.values():
        smoke(url, timeout_s=60)

    result, _ = redeploy(deployed, [ModelSpec("synthdet", other_checkpoint)])
    assert (
        post_image(
            result.endpoint.replace("/synthdet", "/second"), make_test_jpeg(), timeout_s=10
        ).status_code
        == 404
    )
    assert guest(info, f"ls -A {MODEL_STORE}").split() == ["synthdet.mar"]
    assert service_pids(info) == pids
    smoke(result.endpoint, timeout_s=60)


# --------------------------------------------------------------- reboot, undeploy
def test_reboot_brings_the_endpoint_back(deployed: Deployed) -> None:
    started = time.monotonic()
    th.reboot(deployed.info.name)
    back_s = wait_serving(deployed.endpoint)
    print(
        f"reboot: endpoint serving {time.monotonic() - started:.1f} s after `reboot` "
        f"({back_s:.1f} s after SSH was back)"
    )


def test_undeploy_removes_what_deploy_installed(deployed: Deployed) -> None:
    info = deployed.info
    # The snapshot sees what the deploy made (so the comparison below can fail) ...
    made = host_tree(info) - deployed.tree_before
    assert {"/etc/synthdet/url_secret", "/etc/systemd/system/synthdet-torchserve.service"} <= made
    assert "/etc/nginx/sites-enabled/synthdet" in made and "/opt/synthdet/venv" in made
    deploy_lib.undeploy(deployed.target, deployed.options)
    # ... and whatever any step created is gone again: the host's files are what they were.
    left = sorted(host_tree(info) - deployed.tree_before)
    assert left == [], f"deploy left these behind after undeploy: {left[:40]}"
    leftovers = guest(
        info,
        "ls -d /opt/synthdet /var/lib/synthdet /etc/synthdet /var/log/synthdet "
        f"/etc/systemd/system/{UNIT_NAME} /etc/nginx/sites-enabled/synthdet 2>/dev/null; "
        f"id -u {SERVICE_USER} 2>/dev/null; nft list table inet synthdet 2>/dev/null; true",
    )
    assert leftovers.strip() == ""
    # The login it came through is untouched: it still logs in and may still use sudo.
    rc, out, err = th.ssh_exec(info, "id -nG; sudo -n true && echo SUDO-OK", user=info.user)
    assert rc == 0 and "google-sudoers" in out and "SUDO-OK" in out, (out, err)
    assert guest(info, "readlink /etc/nginx/sites-enabled/default").strip()  # restored
    with socket.socket() as sock:
        sock.settimeout(3)
        assert sock.connect_ex((info.host, 443)) != 0
    # Undeploy twice is fine.
    deploy_lib.undeploy(deployed.target, deployed.options)
