"""A publicly trusted certificate for the test host's IP, from a real ACME server (issue #25).

Debian's pebble runs on the host side of the guest's network and validates for real:
it connects to the guest's port 443 with ALPN `acme-tls/1`, which nginx's stream
splitter hands to the certificate client's responder. One host is deployed through the
CLI and shared by the tests of this module, which run in file order:

1. pebble not running: the deploy still succeeds, self-signed, and says why;
2. pebble up: the next deploy gets a certificate that verifies for the IP against
   pebble's root (curl, a Python TLS client) and Chromium trusting that root opens the
   viewer without a warning; the ports open are still 22 and 443;
3. a forced renewal swaps the certificate while requests keep succeeding;
4. a redeploy reuses the valid certificate; undeploy takes the splitter and timer away.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from bootstrap import deploy as deploy_lib
from bootstrap.api import DeployOptions, SshTarget
from bootstrap.steps.acme import CERT_SERVICE, CERT_TIMER, STATUS_FILE
from bootstrap.steps.nginx import STREAM_CONF
from serving import endpoint
from serving.models import ModelSpec
from serving.polling import poll
from tests.support import testhost as th
from tests.support.browser import chromium, require_chromium
from tests.support.deployment import cli_deploy, guest, require_test_hosts, wheelhouse_pip
from tests.support.pebble import Pebble, require_pebble
from tests.system.test_exposure import scan

pytestmark = pytest.mark.system

CLIENT = "/opt/synthdet/venv/bin/python /opt/synthdet/synthdet-cert.py"


@dataclass
class AcmeHost:
    info: th.TestHostInfo
    pebble: Pebble
    work: Path
    checkpoint: Path
    known_hosts: Path
    bundle: Path  # what --acme-ca gets: pebble's HTTPS CA (+ its issuing root once it runs)
    result: dict[str, object] = field(default_factory=dict)  # the last CLI deploy's --json

    @property
    def root(self) -> Path:
        """Pebble's issuing root alone: what the clients below trust (new at every pebble start)."""
        return self.pebble.root_file(self.work / "pebble-root.pem")

    @property
    def health_url(self) -> str:
        secret = httpx.URL(str(self.result["endpoint"])).path.split("/")[1]
        return endpoint.health_url(endpoint.base_url(self.info.host, 443), secret)

    def options(self) -> DeployOptions:
        return DeployOptions(
            pip=wheelhouse_pip(self.info),
            acme=True,
            acme_directory=self.pebble.directory_url,
            acme_ca=self.bundle,
        )

    def target(self) -> SshTarget:
        return SshTarget(
            self.info.host,
            self.info.user,
            Path(self.info.key),
            port=self.info.port,
            known_hosts=self.known_hosts,
        )

    def cli_deploy(self) -> tuple[subprocess.CompletedProcess[str], float]:
        args = [
            "--host", self.info.host, "--user", self.info.user, "--key", self.info.key,
            "--known-hosts", str(self.known_hosts), "--model", str(self.checkpoint), "--json",
            "--acme", "--acme-directory", self.pebble.directory_url, "--acme-ca", str(self.bundle),
            *self.info.deploy_args,
        ]  # fmt: skip
        proc, self.result, elapsed = cli_deploy(args)
        return proc, elapsed


@pytest.fixture(scope="module")
def acme_host(unity_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeHost]:
    require_pebble()
    require_test_hosts()
    name = f"sda-{os.getpid()}"
    info = th.up(name)  # GCP's login: the non-root `synthdet` with passwordless sudo
    work = tmp_path_factory.mktemp("acme")
    pebble = Pebble(info.host_side_ip, work / "pebble")  # validates on the guest's 443
    try:
        yield AcmeHost(info, pebble, work, unity_checkpoint, work / "known_hosts", work / "acme-ca.pem")
    finally:
        pebble.stop()
        th.down(name)


def served_der(address: str, port: int = 443) -> bytes:
    """The certificate the endpoint presents (not verified: we only look)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def journal_lines(info: th.TestHostInfo) -> list[str]:
    return guest(info, "journalctl -t synthdet-cert -o cat --no-pager").splitlines()


def step_line(stderr: str, step: str) -> str:
    """The CLI's one line about a finished step: "changed|unchanged STEP  detail"."""
    lines = [
        line for line in stderr.splitlines() if line.split()[:2] in (["changed", step], ["unchanged", step])
    ]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------ 1. the CA down
def test_with_the_ca_down_the_deploy_succeeds_self_signed_and_says_why(acme_host: AcmeHost) -> None:
    h = acme_host
    h.bundle.write_bytes(h.pebble.tls_ca.read_bytes())  # pebble has never run: no issuing root yet
    proc, elapsed = h.cli_deploy()
    print(f"deploy with the ACME server down: {elapsed:.1f} s")
    reason = f"cannot reach the ACME server {h.pebble.directory_url}: [Errno 111] Connection refused"
    line = step_line(proc.stderr, "certificate")
    assert f"no certificate from the CA, serving a self-signed one: {reason}" in line
    assert "trying again hourly" in line
    assert h.result["certificate"] == {"source": "self-signed", "public": "no", "note": reason}
    der = served_der(h.info.host)
    served = x509.load_der_x509_certificate(der)
    assert served.issuer == served.subject  # self-signed
    assert h.result["cert_sha256"] == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    status = json.loads(guest(h.info, f"cat {STATUS_FILE}"))
    assert status["source"] == "self-signed" and status["last_error"] == reason
    # ...and tries again on its own.
    assert guest(h.info, f"systemctl is-active {CERT_TIMER}").strip() == "active"
    assert guest(h.info, f"systemctl is-enabled {CERT_TIMER}").strip() == "enabled"


# ------------------------------------------------------------------ 2. the CA up
def test_with_the_ca_up_the_certificate_verifies_for_the_ip_against_pebbles_root(acme_host: AcmeHost) -> None:
    h = acme_host
    h.pebble.start()
    h.pebble.trust_bundle(h.bundle)
    lines_before = len(journal_lines(h.info))
    proc, elapsed = h.cli_deploy()
    print(f"deploy with the ACME server up: {elapsed:.1f} s")
    assert h.result["certificate"]["public"] == "yes"  # type: ignore[index]
    assert "new: CN=Pebble Intermediate CA" in step_line(proc.stderr, "certificate")
    assert "Certificate: publicly trusted" in proc.stderr
    # A real TLS client verifies the chain and the IP against pebble's root, and only that root.
    root = h.root
    curl = subprocess.run(
        ["curl", "-sS", "--cacert", str(root), "-o", "/dev/null", "-w", "%{http_code}", h.health_url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert curl.stdout == "200", curl.stderr
    context = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection((h.info.host, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=h.info.host) as tls,
    ):
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    assert leaf.issuer.rfc4514_string().startswith("CN=Pebble Intermediate CA")
    untrusting = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", h.health_url], capture_output=True, timeout=30
    )
    assert untrusting.returncode == 60  # "peer certificate cannot be authenticated": not a system root
    # Validated for real (pebble checked the guest's 443: the client answers TLS-ALPN-01 only);
    # one journal line for the issuance.
    assert "set VALID by completed challenge" in h.pebble.log.read_text()
    new_lines = journal_lines(h.info)[lines_before:]
    assert len(new_lines) == 1 and new_lines[0].startswith(f"new certificate for {h.info.host} from ")
    assert "(tls-alpn-01, " in new_lines[0]


def test_only_ssh_and_https_are_open(acme_host: AcmeHost) -> None:
    assert scan(acme_host.info.host) == {22, 443}


def test_the_site_still_sees_the_clients_own_address(acme_host: AcmeHost) -> None:
    h = acme_host
    assert httpx.get(h.health_url, verify=ssl.create_default_context(cafile=str(h.root))).status_code == 200
    # Through the splitter's PROXY protocol: the host side's address, not 127.0.0.1 (the
    # per-address limits count clients, not the splitter).
    last = guest(h.info, "tail -n 1 /var/log/nginx/synthdet.access.log").split()[0]
    assert last == h.info.host_side_ip


def test_chromium_trusting_the_root_opens_the_viewer_without_a_warning(
    acme_host: AcmeHost, tmp_path: Path
) -> None:
    require_chromium()
    h = acme_host
    url = str(h.result["endpoint"])
    with chromium(tmp_path / "trusting", trusted_root=h.root) as driver:
        driver.get(url)
        assert driver.execute_script("return window.isSecureContext") is True
        # The viewer itself, not Chromium's "Your connection is not private" page.
        assert driver.execute_script("return document.getElementById('threshold') !== null") is True
        assert driver.title != "Privacy error"
    # The same browser without that root shows the warning: the check above can fail.
    other_root = tmp_path / "other-root.pem"
    other_root.write_bytes(h.pebble.tls_ca.read_bytes())
    with chromium(tmp_path / "other", trusted_root=other_root) as driver:
        driver.get(url)
        assert driver.title == "Privacy error"
        assert driver.execute_script("return document.getElementById('threshold') === null") is True


# ------------------------------------------------------------------ 3. renewal
class Requests:
    """Requests to the health path while something happens: fresh TLS connections (a Python
    client verifying against the root, noting the certificate each got) and curl reusing one
    connection (it retries a reused connection the server closed, as browsers do)."""

    def __init__(self, url: str, host: str, root: Path, work: Path) -> None:
        self.url, self.host, self.root = url, host, root
        self.stop = threading.Event()
        self.fresh: list[tuple[int, str]] = []  # (status or 0, sha256 of the certificate)
        self.errors: list[str] = []
        self.curl_out = work / "curl.out"
        path = httpx.URL(url).raw_path.decode()
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    def _fresh(self) -> None:
        context = ssl.create_default_context(cafile=str(self.root))
        while not self.stop.is_set():
            try:
                with (
                    socket.create_connection((self.host, 443), timeout=10) as raw,
                    context.wrap_socket(raw, server_hostname=self.host) as tls,
                ):
                    tls.sendall(self.request)
                    status = int(tls.recv(64).split(b" ")[1])
                    sha = hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()
                self.fresh.append((status, sha))
            except (OSError, ValueError, IndexError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(0.2)  # 5/s: with curl's 8/s under the per-address limit (20/s)

    def __enter__(self) -> Requests:
        self.thread = threading.Thread(target=self._fresh, daemon=True)
        self.thread.start()
        with self.curl_out.open("w") as out:
            self.curl = subprocess.Popen(
                [
                    "stdbuf",  # each status line as it comes: curl's stdout is a file here
                    "-oL",
                    "curl",
                    "-s",
                    "--cacert",
                    str(self.root),
                    "--rate",
                    "8/s",
                    "-w",
                    "%{http_code}\n",
                ]
                # One connection for them all; each URL needs its own -o (else bodies go to stdout).
                + ["-o", "/dev/null", self.url] * 2000,
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        return self

    def curl_codes(self) -> list[str]:
        return self.curl_out.read_text().split()

    def wait_for(self, fresh: int, curl: int) -> None:
        done, _ = poll(
            lambda: (len(self.fresh), len(self.curl_codes())),
            lambda n: n[0] >= fresh and n[1] >= curl,
            timeout_s=120,
            every_s=0.2,
        )
        assert done, (len(self.fresh), len(self.curl_codes()), self.errors[-3:])

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.curl.terminate()
        self.curl.wait(timeout=10)
        self.thread.join(timeout=30)


def test_a_forced_renewal_swaps_the_certificate_while_requests_keep_succeeding(acme_host: AcmeHost) -> None:
    h = acme_host
    before = served_der(h.info.host)
    lines_before = len(journal_lines(h.info))
    with Requests(h.health_url, h.info.host, h.root, h.work) as load:
        load.wait_for(fresh=10, curl=15)
        started = time.monotonic()
        said = guest(h.info, f"{CLIENT} --force", timeout=300).strip()
        renewal_s = time.monotonic() - started
        counts = len(load.fresh), len(load.curl_codes())
        load.wait_for(fresh=counts[0] + 10, curl=counts[1] + 15)
    after = served_der(h.info.host)
    assert after != before
    assert said.startswith(f"new certificate for {h.info.host} from ")
    # Exactly one journal line for the renewal (the client, run by hand, writes it there too).
    new_lines = journal_lines(h.info)[lines_before:]
    assert new_lines == [said]
    # Not one failed request, and fresh connections met both certificates.
    fresh_codes = {status for status, _ in load.fresh}
    curl_codes = load.curl_codes()
    print(
        f"renewal {renewal_s:.1f} s; fresh connections {len(load.fresh)} (codes {fresh_codes}), "
        f"curl keep-alive {len(curl_codes)} (codes {set(curl_codes)})"
    )
    assert load.errors == [] and fresh_codes == {200}
    assert set(curl_codes) == {"200"}
    seen = {sha for _, sha in load.fresh}
    assert {hashlib.sha256(before).hexdigest(), hashlib.sha256(after).hexdigest()} <= seen


# ------------------------------------------------------------------ 4. reuse, undeploy
def test_a_redeploy_reuses_the_valid_certificate(acme_host: AcmeHost) -> None:
    h = acme_host
    issued = h.pebble.log.read_text().count("Issued certificate serial")
    served = served_der(h.info.host)
    result = deploy_lib.deploy(h.target(), [ModelSpec("synthdet", h.checkpoint)], h.options())
    assert served_der(h.info.host) == served
    assert h.pebble.log.read_text().count("Issued certificate serial") == issued  # no new order
    assert result.certificate["public"] == "yes" and result.certificate["source"] == "acme"
    assert dict(result.steps)["certificate"] is False


def test_undeploy_takes_the_splitter_and_the_timer_away(acme_host: AcmeHost) -> None:
    h = acme_host
    deploy_lib.undeploy(h.target())
    left = guest(
        h.info,
        f"ls {STREAM_CONF} /etc/systemd/system/{CERT_TIMER} /etc/systemd/system/{CERT_SERVICE} 2>&1 || true",
    )
    assert left.count("No such file") == 3, left
    assert guest(h.info, "systemctl is-active nginx").strip() == "active"
    assert 443 not in scan(h.info.host, range(440, 450))
