"""A replica's startup script alone, on a real systemd test host: no SSH session deploys.

What a cloud does for an instance behind a load balancer is simulated as
closely as the test host allows:

- the bundle (this project's wheel, the model archive, boot.json) is served
  over HTTP from the host side, like the stack's bucket; so are the wheels pip
  needs (the guest has no internet);
- SSH is used only the way a metadata server would hand the script over: it
  places the script and a oneshot unit (google-startup-scripts.service / cloud-init
  style) in the guest; then the guest is rebooted and runs it by itself;
- the result is judged from outside, as the load balancer and the app would:
  the health path under the secret, one app-style image, 404 elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bootstrap.api import DeployOptions, PipSource
from bootstrap.boot_local import boot_config
from bootstrap.bundle import build_bundle
from bootstrap.startup_script import config_json, config_models, config_object_name, render_startup_script
from bootstrap.steps.base import UNIT_NAME
from serving.contract import smoke
from serving.endpoint import LB_HEALTH_PATH
from serving.models import ModelSpec
from serving.polling import poll
from serving.settings import ServingSettings
from tests.support import testhost as th
from tests.support.deployment import guest, wait_healthy
from tests.support.loopback import serve_http
from tests.support.testhost.wheelhouse import build_boot_wheelhouse, build_wheelhouse

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
SCRIPT_PATH = "/var/lib/synthdet-startup/startup-script"
STARTUP_UNIT = "synthdet-startup.service"
# Like google-startup-scripts.service: run the script once per boot, after the network.
UNIT_TEXT = f"""[Unit]
Description=Run the instance startup script (as a cloud's guest agent does)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/bash {SCRIPT_PATH}
TimeoutStartSec=0
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""
# Fetch, venv, pip, TorchServe start and a CPU model load on shared cores.
SERVE_TIMEOUT_S = 900.0


def link_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not (dst / path.name).exists():
            try:
                os.link(path, dst / path.name)
            except OSError:  # another filesystem
                shutil.copyfile(path, dst / path.name)


@contextlib.contextmanager
def serve_directory(root: Path, address: str) -> Iterator[str]:
    """A plain HTTP server on the host side (the guest's stand-in for the bucket)."""
    with serve_http(functools.partial(_QuietHandler, directory=str(root)), address=address) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def wait_startup_script_done(info: th.TestHostInfo, deadline: float) -> None:
    """Until the oneshot unit has run to its end in this boot.

    Serving alone does not say so: after the first boot nginx and TorchServe are
    enabled and come up before the script starts; a unit that has not started yet
    reads "inactive" like one that has finished. Its exit timestamp tells them apart.
    """
    query = f"systemctl show -p ExecMainExitTimestampMonotonic --value {STARTUP_UNIT}"
    while guest(info, query).strip() in ("", "0"):
        assert time.monotonic() < deadline, "the startup script did not finish\n" + boot_log(info)
        time.sleep(3)


def boot_log(info: th.TestHostInfo) -> str:
    _, log, _ = th.ssh_exec(info, "tail -n 80 /var/log/synthdet-boot.log")
    _, journal, _ = th.ssh_exec(info, f"journalctl -b -u {STARTUP_UNIT} --no-pager | tail -n 40")
    return f"boot log:\n{log}\njournal:\n{journal}"


# More secret guesses than the miss limit lets through at once (10/s, burst 40).
GUESSES = 150


def limits_count_phones_behind_the_balancer(info: th.TestHostInfo, base_url: str) -> None:
    """Through the trusted balancer (this machine) each phone in X-Forwarded-For has a bucket of
    its own; from anywhere else the header is ignored, so forging it gains nothing."""

    def guesses(client: httpx.Client, phone: str, count: int) -> list[int]:
        headers = {"X-Forwarded-For": phone}
        return [client.get(f"{base_url}/a-guess", headers=headers).status_code for _ in range(count)]

    with httpx.Client(verify=False, timeout=10.0) as balancer:
        first_phone = guesses(balancer, "198.51.100.1", GUESSES)
        assert 429 in first_phone and set(first_phone) <= {404, 429}
        assert guesses(balancer, "198.51.100.2", 1) == [404]  # another phone: not limited
    # From the host itself (not a balancer address): a forged header keeps its own bucket.
    # One curl, one connection, for all the guesses and then the other "phone" (--next):
    # they arrive far faster than the limit's 10/s even on a busy host. (A curl process per
    # guess could not outpace it on a loaded machine, and a bucket refills one request per
    # 100 ms: the other phone's request, made by a new process, was then let through.)
    guess = "-o /dev/null https://127.0.0.1/a-guess"
    forged = guest(
        info,
        "curl -sk -w '%{http_code}\\n' -H 'X-Forwarded-For: 198.51.100.3' "
        + " ".join([guess] * GUESSES)
        + " --next -sk -w '%{http_code}\\n' -H 'X-Forwarded-For: 198.51.100.4' "
        + guess,
    ).split()
    assert "429" in forged[:-1] and forged[-1] == "429", forged[-5:]


# The cloud's metadata server, as far as a socket can tell: HTTP on the metadata address, for
# GCP's token path and AWS's IMDSv2 token PUT alike, and a stand-in for its DNS port (53).
FAKE_METADATA = """
import http.server, threading
class Answer(http.server.BaseHTTPRequestHandler):
    def reply(self):
        body = b'{"access_token": "stand-in"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_PUT = reply
    def log_message(self, *args):
        pass
for port in (80, 53):
    server = http.server.ThreadingHTTPServer(("169.254.169.254", port), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
threading.Event().wait()
"""
GCP_TOKEN = "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"
AWS_TOKEN = "http://169.254.169.254/latest/api/token"


def metadata_server_is_roots_alone(info: th.TestHostInfo) -> None:
    """After boot only root can ask the metadata server for the instance's credentials."""
    guest(info, "ip addr add 169.254.169.254/32 dev lo")
    guest(info, f"systemd-run --quiet --unit=fake-metadata --collect python3 -c {shlex.quote(FAKE_METADATA)}")
    try:

        def status(user: str, url: str, method: str = "GET") -> str:
            curl = f"curl -s -o /dev/null -w '%{{http_code}}' -m 5 -X {method} -H 'Metadata-Flavor: Google'"
            curl += f" {url}"
            return guest(info, f"runuser -u {user} -- {curl} || true").strip()

        up, _ = poll(lambda: status("root", GCP_TOKEN), lambda code: code == "200", timeout_s=30, every_s=0.5)
        assert up, "the stand-in metadata server did not answer root"
        assert status("root", AWS_TOKEN, "PUT") == "200"
        for user in ("nobody", info.user):
            assert status(user, GCP_TOKEN) == "000", user  # refused: no connection at all
            assert status(user, AWS_TOKEN, "PUT") == "000", user
        # The same address's other services (GCP's DNS resolver, NTP) stay open to everyone.
        assert status("nobody", "http://169.254.169.254:53/") == "200"
    finally:
        th.ssh_exec(info, "systemctl stop fake-metadata; ip addr del 169.254.169.254/32 dev lo")


def test_startup_script_alone_brings_up_a_healthy_endpoint(
    fresh_testhost, unity_checkpoint: Path, tmp_path: Path
) -> None:
    info = fresh_testhost()
    assert info.host_side_ip

    # --- the "bucket": bundle + boot.json, and the wheels pip may use
    serving = ServingSettings.model_validate({})
    bundle = build_bundle([ModelSpec("synthdet", unity_checkpoint)], serving, cache=tmp_path / "cache")
    www = tmp_path / "www"
    for item in bundle.files():
        target = www / item.object_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.path, target)
    pypi = www / "pypi"
    link_files(build_wheelhouse(), pypi)
    link_files(build_boot_wheelhouse(), pypi)

    secret = secrets.token_urlsafe(24)
    with serve_directory(www, info.host_side_ip) as base:
        pip = PipSource(find_links=f"{base}/pypi/", trusted_hosts=(info.host_side_ip,))
        # This machine plays the load balancer: nginx trusts it and answers its health checks.
        options = DeployOptions(
            serving=serving, url_secret=secret, pip=pip, balancer_cidrs=(f"{info.host_side_ip}/32",)
        )
        config = config_json(boot_config(models=config_models(bundle), options=options))
        config_object = config_object_name(config)
        (www / config_object).parent.mkdir(parents=True, exist_ok=True)
        (www / config_object).write_text(config)
        script = render_startup_script(source=base, bundle=bundle, config_object=config_object, pip=pip)
        assert secret not in script  # the script (instance metadata) never holds the secret

        # --- the "metadata server": hand the script to the guest, enable the runner, reboot
        local = tmp_path / "startup-script"
        local.write_text(script)
        guest(info, f"mkdir -p {os.path.dirname(SCRIPT_PATH)}")
        subprocess.run(
            [*th.ssh_argv(info), f"cat > {SCRIPT_PATH}"], input=script.encode(), check=True, timeout=60
        )
        subprocess.run(
            [*th.ssh_argv(info), f"cat > /etc/systemd/system/{STARTUP_UNIT}"],
            input=UNIT_TEXT.encode(),
            check=True,
            timeout=60,
        )
        guest(info, f"systemctl daemon-reload && systemctl enable {STARTUP_UNIT}")
        assert "inactive" in guest(info, f"systemctl is-active {UNIT_NAME} || true")
        th.reboot(info.name)

        # --- judged from outside, like the load balancer and the app. Healthy first (the
        # balancer's view), then the script's own end (its last check is one test image
        # through nginx: on the guest's shared CPU two at once only compete).
        base_url = f"https://{info.host}"
        took = wait_healthy(f"{base_url}{LB_HEALTH_PATH}", SERVE_TIMEOUT_S, every_s=3.0)
        wait_startup_script_done(info, time.monotonic() + SERVE_TIMEOUT_S)
        result = smoke(f"{base_url}/{secret}/predictions/synthdet", timeout_s=120)
        assert result.status == 200
        print(f"healthy {took:.0f} s after the reboot; smoke {result.latency_ms:.0f} ms")

    with httpx.Client(verify=False, timeout=10.0) as client:
        assert client.get(f"{base_url}/ping").status_code == 404
        assert client.get(f"{base_url}/not-the-secret/ping").status_code == 404
        assert client.get(f"{base_url}/{secret}/ping").status_code == 200
        # The balancer forwards every path (it knows no secret): a phone behind it asking
        # for the health path gets the 404 any unknown path gets.
        phone = client.get(f"{base_url}{LB_HEALTH_PATH}", headers={"X-Forwarded-For": "198.51.100.9"})
        assert phone.status_code == 404 and phone.json()["code"] == 404
    # The secret-free health path answers the balancer's addresses only.
    refused = guest(info, f"curl -sk -o /dev/null -w '%{{http_code}}' https://127.0.0.1{LB_HEALTH_PATH}")
    assert refused.strip() == "404", refused
    limits_count_phones_behind_the_balancer(info, base_url)

    # The guest ran it by itself: the oneshot unit finished successfully and logged it.
    assert guest(info, f"systemctl show -p Result --value {STARTUP_UNIT}").strip() == "success", boot_log(
        info
    )
    # Its last line follows the bootstrap's JSON by a moment: wait for it briefly.
    deadline = time.monotonic() + 30
    while "done: serving" not in (log := guest(info, "cat /var/log/synthdet-boot.log")):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(1)
    assert secret not in log  # nothing prints the secret URL
    assert guest(info, f"systemctl is-enabled {UNIT_NAME}").strip() == "enabled"
    assert guest(info, "stat -c '%a' /var/lib/synthdet-boot/files/boot.json").strip() == "600"
    metadata_server_is_roots_alone(info)

    # Every boot runs it again (GCP's startup-script does): idempotent, serving again with
    # nobody logging in, even with the "bucket" gone (the server above is stopped): what the
    # first boot fetched is cached and checked.
    th.reboot(info.name)
    wait_healthy(f"{base_url}{LB_HEALTH_PATH}", SERVE_TIMEOUT_S, every_s=3.0)
    wait_startup_script_done(info, time.monotonic() + SERVE_TIMEOUT_S)
    assert guest(info, f"systemctl show -p Result --value {STARTUP_UNIT}").strip() == "success", boot_log(
        info
    )
    log = guest(info, "cat /var/log/synthdet-boot.log")
    assert log.count("done: serving") == 2
    # The metadata rule came back with the boot, before the startup script ran.
    assert "169.254.169.254" in guest(info, "nft list table inet synthdet")
    assert "using the config of the last boot" in log
    assert smoke(f"{base_url}/{secret}/predictions/synthdet", timeout_s=120).status == 200
