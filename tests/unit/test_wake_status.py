"""`synthdet wake` and `synthdet status` against the fake cloud APIs, over real HTTP.

The cloud is tests/support/fake_gcp_api.py or fake_aws_api.py (reached by the real
`python -m infra.power` subprocess through the cloud SDK layer); the stack's outputs
come from a stand-in `pulumi` first on PATH; the host is a stand-in HTTPS server on
loopback with a self-signed certificate, answering the health path, the prediction
path (as TorchServe would: `[]`) and the idle status the way nginx does on a deployed
host. The real host side (nginx, the idle clock, a power-off) is
tests/system/test_idle_stop.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from bootstrap import acme_client
from serving.certs import fingerprint_sha256, make_self_signed
from synthdet import wake as wake_module
from synthdet.cli import app
from synthdet.stack_outputs import read_stack_outputs
from tests.support.cloud_check import faked_aws, faked_gcp
from tests.support.fake_aws_api import AwsWorld
from tests.support.fake_gcp_api import GcpWorld
from tests.support.loopback import reply, serve_http, server_tls
from tests.support.pebble import make_server_tls

SECRET = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3t12"
STACK = "my-gcp-t4"
GCP_VM = {"cloud": "gcp", "project": "demo-project", "zone": "us-central1-b", "name": "synthdet-vm-1a2b3c4"}
AWS_ID = "i-0123456789abcdef0"
AWS_VM = {"cloud": "aws", "region": "us-east-1", "instance_id": AWS_ID, "profile": ""}
RUNNING_COST, STOPPED_COST = 0.5621, 0.0271
IDLE = {
    "idle_stop_minutes": 30,
    "idle_seconds": 750,
    "idle_minutes": 12.5,
    "stops_at": "2026-12-03T14:05:00Z",
    "last_request_at": "2026-12-03T13:35:00Z",
    "last_login_at": None,
    "window_start_at": "2026-12-03T13:00:00Z",
    "sessions": 0,
    "last_idle_stop_at": None,
    "checked_at": "2026-12-03T13:47:00Z",
}


@dataclass
class Host:
    """The stand-in host: what it answers, and what it was asked."""

    port: int = 0
    cert_pem: bytes = b""
    # Health checks answered 503 before it is up (TorchServe starting).
    unready_pings: int = 0
    idle: dict[str, Any] | None = field(default_factory=lambda: dict(IDLE))
    asked: list[tuple[str, str]] = field(default_factory=list)
    # A folder: serve a certificate issued by a test CA written there (tls-ca.pem), as an
    # ACME host does; None: a self-signed one, as a host without ACME (or its fallback).
    ca_dir: Path | None = None
    # Or exactly this certificate and key (PEM).
    pair: tuple[bytes, bytes] | None = None
    tls: ssl.SSLContext | None = None  # the server's: `renew` swaps its certificate

    def renew(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve another certificate from the next handshake on, as nginx does after a reload."""
        assert self.tls is not None
        with tempfile.TemporaryDirectory() as folder:
            cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
            cert.write_bytes(cert_pem)
            key.write_bytes(key_pem)
            self.tls.load_cert_chain(cert, key)
        self.cert_pem = cert_pem

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}/{SECRET}/predictions/synthdet"

    def predictions(self) -> int:
        return sum(1 for method, path in self.asked if method == "POST" and "/predictions/" in path)


@contextmanager
def stand_in_host(host: Host) -> Iterator[Host]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
            reply(self, status, kind, body)

        def do_GET(self) -> None:  # noqa: N802
            host.asked.append(("GET", self.path))
            if self.path == f"/{SECRET}/ping":
                if host.unready_pings > 0:
                    host.unready_pings -= 1
                    self.answer(503, b'{"code": 503, "error": "starting"}')
                else:
                    self.answer(200, b'{"status": "Healthy"}')
            elif self.path == f"/{SECRET}/idle-stop" and host.idle is not None:
                self.answer(200, json.dumps(host.idle).encode())
            else:
                self.answer(404, b'{"code": 404, "error": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            host.asked.append(("POST", self.path))
            if self.path == f"/{SECRET}/predictions/synthdet":
                self.answer(200, b"[]")
            else:
                self.answer(404, b'{"code": 404, "error": "not found"}')

    if host.pair is not None:
        cert, key = host.pair
    elif host.ca_dir is not None:
        _, cert_file, key_file = make_server_tls("127.0.0.1", host.ca_dir)
        cert, key = cert_file.read_bytes(), key_file.read_bytes()
    else:
        cert, key = make_self_signed(["127.0.0.1"])
    host.tls = server_tls(cert, key)
    with serve_http(Handler, tls=host.tls, poll_interval=0.05) as url:
        host.port, host.cert_pem = int(url.rsplit(":", 1)[1]), cert
        yield host


@pytest.fixture
def host() -> Iterator[Host]:
    with stand_in_host(Host()) as running:
        yield running


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wake_module, "ENDPOINT_EVERY_S", 0.1)
    monkeypatch.setattr(wake_module, "VM_EVERY_S", 0.1)


@pytest.fixture
def stack_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The outputs a stand-in `pulumi` prints for STACK (a test fills them in)."""
    outputs: dict[str, Any] = {}
    data = tmp_path / "outputs.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pulumi"
    # Exactly the command synthdet must run; anything else fails like the CLI does.
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$*" = "stack output --json --show-secrets --stack {STACK}" ]; then cat {data}; exit 0; fi\n'
        "echo \"error: no stack named '$6' found\" >&2; exit 255\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    class Writer(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            super().__setitem__(key, value)
            data.write_text(json.dumps(self))

        def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            super().update(*args, **kwargs)
            data.write_text(json.dumps(self))

    outputs = Writer()
    data.write_text("{}")
    return outputs


def deployed(outputs: dict[str, Any], host: Host, vm: dict[str, str] | None, **extra: Any) -> None:
    """What infra/__main__.py exports for a single host."""
    values: dict[str, Any] = {
        "endpoint": host.endpoint,
        "cert_sha256": fingerprint_sha256(host.cert_pem),
        "idle_stop_minutes": 30,
        "hourly_cost_usd": RUNNING_COST,
    }
    values |= {"cloud_vm": vm, "stopped_hourly_cost_usd": STOPPED_COST} if vm else {"address": "127.0.0.1"}
    outputs.update(values | extra)


@pytest.fixture
def gcp(monkeypatch: pytest.MonkeyPatch) -> Iterator[GcpWorld]:
    with faked_gcp(monkeypatch) as world:
        yield world


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsWorld]:
    with faked_aws(monkeypatch) as world:
        yield world


def synthdet(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def gcp_started(world: GcpWorld) -> bool:
    return (
        "POST",
        f"/compute/v1/projects/demo-project/zones/us-central1-b/instances/{GCP_VM['name']}/start",
    ) in (world.requests)


# ------------------------------------------------------------------------ wake


def test_wake_starts_a_stopped_gcp_vm_waits_for_its_endpoint_and_prints_the_qr(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "TERMINATED"  # what an idle stop leaves
    host.unready_pings = 2  # TorchServe still starting when the VM runs
    deployed(stack_outputs, host, GCP_VM)
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 0, done.output
    assert gcp_started(gcp)
    assert gcp.instances[("us-central1-b", GCP_VM["name"])] == "RUNNING"
    assert "TERMINATED" in done.output and "started and answering" in done.output
    # It waited out the health checks that said 503, then one request like the app's.
    assert host.unready_pings == 0 and host.predictions() == 1
    assert f"Endpoint: {host.endpoint}" in done.output and "\u2580" in done.output  # the QR code
    assert "powers itself off after 30 minutes" in done.output
    assert f"synthdet wake --stack {STACK}" in done.output


def test_wake_leaves_a_running_vm_alone(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    deployed(stack_outputs, host, GCP_VM)
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 0, done.output
    assert not gcp_started(gcp) and ": answering" in done.output and host.predictions() == 1


def test_wake_starts_a_stopped_aws_instance_and_waits_until_it_runs(aws, host, stack_outputs):
    aws.instances[AWS_ID] = ("stopped", "us-east-1b")
    deployed(stack_outputs, host, AWS_VM)
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 0, done.output
    assert aws.instances[AWS_ID][0] == "running"
    assert "pending" in done.output and "started and answering" in done.output


def test_wake_says_when_the_cloud_accepts_the_start_but_cannot_run_it(gcp, host, stack_outputs, monkeypatch):
    monkeypatch.setattr(wake_module, "STILL_STOPPED_S", 0.5)
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "TERMINATED"
    gcp.start_capacity = False  # a zone out of spot capacity
    deployed(stack_outputs, host, GCP_VM)
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 1 and gcp_started(gcp)
    assert "could not start it" in done.output and "Try again later" in done.output
    assert host.asked == []


def test_wake_of_a_vm_that_is_gone_says_what_to_do(gcp, host, stack_outputs):
    deployed(stack_outputs, host, GCP_VM)  # no such instance in the fake project
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 1
    assert "no longer exists" in done.output and "pulumi up" in done.output and host.asked == []


def test_wake_refuses_a_host_that_serves_another_certificate(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    deployed(stack_outputs, host, GCP_VM, cert_sha256="AB:" * 31 + "AB")
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 1
    assert "not the one the stack deployed" in done.output and host.predictions() == 0


def test_wake_gives_up_after_its_timeout(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    host.unready_pings = 10**6
    deployed(stack_outputs, host, GCP_VM)
    outputs = read_stack_outputs(STACK, Path.cwd())
    with pytest.raises(wake_module.WakeError, match=r"did not answer within 1 s .*HTTP 503"):
        wake_module.wake(outputs, Path.cwd(), timeout_s=1.0, say=lambda line: None)


def test_a_fleet_has_nothing_to_wake(stack_outputs, host):
    stack_outputs.update(endpoint=host.endpoint, group_id="synthdet-group", hourly_cost_usd=1.2)
    done = synthdet("wake", "--stack", STACK)
    assert done.exit_code == 1 and "never powers off" in done.output


def test_an_unknown_stack_is_the_pulumi_clis_error_in_one_line(stack_outputs):
    done = synthdet("wake", "--stack", "nope")
    assert done.exit_code == 1
    assert "no stack named 'nope' found" in done.output and "Traceback" not in done.output


# ------------------------------------------------------------------------ status


def test_status_of_a_running_host_reads_its_idle_clock_without_using_it(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    deployed(stack_outputs, host, GCP_VM)
    done = synthdet("status", "--stack", STACK, "--json")
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["state"] == "running" and found["cloud_state"] == "RUNNING"
    assert found["idle"]["idle_minutes"] == 12.5 and found["idle"]["stops_at"] == IDLE["stops_at"]
    assert found["idle_stop_minutes"] == 30
    assert found["hourly_cost_usd_now"] == RUNNING_COST
    # Reading the status is not a prediction: the clock is not reset by looking at it.
    assert host.asked == [("GET", f"/{SECRET}/idle-stop")]
    text = synthdet("status", "--stack", STACK).output
    assert "idle 12.5 of 30 minutes" in text and "$0.56/h" in text and "$0.027/h" in text


def test_status_of_a_stopped_host_is_what_disk_and_address_cost(aws, host, stack_outputs):
    aws.instances[AWS_ID] = ("stopped", "us-east-1b")
    deployed(stack_outputs, host, AWS_VM)
    found = json.loads(synthdet("status", "--stack", STACK, "--json").output)
    assert found["state"] == "stopped" and found["hourly_cost_usd_now"] == STOPPED_COST
    assert found["idle"] is None and host.asked == []  # nothing asked of a stopped host
    text = synthdet("status", "--stack", STACK).output
    assert "disk and address only" in text and f"synthdet wake --stack {STACK}" in text


def test_status_says_when_the_host_has_no_idle_stop(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    host.idle = None  # nginx: 404
    deployed(stack_outputs, host, GCP_VM, idle_stop_minutes=0)
    text = synthdet("status", "--stack", STACK).output
    assert "idle stop: off" in text and "idleStopMinutes 30" in text and "idle clock" not in text
    # The stack wants it, the host has none: a deploy that did not finish.
    deployed(stack_outputs, host, GCP_VM, idle_stop_minutes=30)
    text = synthdet("status", "--stack", STACK).output
    assert "idle clock: none on the host" in text and "pulumi up" in text


def test_status_of_a_machine_of_your_own_asks_its_endpoint(host, stack_outputs):
    deployed(stack_outputs, host, None)
    found = json.loads(synthdet("status", "--stack", STACK, "--json").output)
    assert found["state"] == "answering" and found["idle"]["idle_minutes"] == 12.5
    assert found["where"] is None


def test_status_of_an_endpoint_by_url(host):
    found = json.loads(synthdet("status", "--url", host.endpoint, "--json").output)
    assert found["idle"]["idle_stop_minutes"] == 30 and host.predictions() == 0
    assert found["certificate"]["public"] is False
    assert found["certificate"]["sha256"] == fingerprint_sha256(host.cert_pem)


def test_status_says_when_an_acme_host_serves_its_self_signed_fallback(gcp, host, stack_outputs):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    deployed(stack_outputs, host, GCP_VM, certificate={"source": "acme", "public": "yes"})
    text = synthdet("status", "--stack", STACK).output
    assert "certificate: not publicly trusted" in text
    assert "self-signed fallback" in text and "journalctl -t synthdet-cert" in text
    # Without ACME a self-signed certificate is what was asked for: no alarm.
    deployed(stack_outputs, host, GCP_VM, certificate={"source": "self-signed", "public": "no"})
    text = synthdet("status", "--stack", STACK).output
    assert "certificate: not publicly trusted" in text and "fallback" not in text


def test_status_shows_a_certificate_a_trusted_ca_vouches_for(
    gcp, stack_outputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The CA is trusted the way OpenSSL's default paths allow (SSL_CERT_FILE), as a phone trusts
    Let's Encrypt's root."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "tls-ca.pem"))
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    with stand_in_host(Host(ca_dir=tmp_path)) as acme_host:
        deployed(stack_outputs, acme_host, GCP_VM, certificate={"source": "acme", "public": "yes"})
        found = json.loads(synthdet("status", "--stack", STACK, "--json").output)
        text = synthdet("status", "--stack", STACK).output
    assert found["certificate"]["public"] is True and "pebble test CA" in found["certificate"]["issuer"]
    assert "certificate: publicly trusted (a padlock)" in text and "fallback" not in text


# ------------------------------------------------------------------------ an ACME host's certificate


class LocalCa:
    """A CA this machine trusts for the test (SSL_CERT_FILE, as a phone trusts Let's Encrypt)."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        roots = folder / "roots.pem"
        roots.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        monkeypatch.setenv("SSL_CERT_FILE", str(roots))

    def issue(self, hours_left: float) -> tuple[bytes, bytes]:
        """(certificate, key) for 127.0.0.1 from a 160-hour lifetime with `hours_left` (< 0: expired)."""
        key = ec.generate_private_key(ec.SECP256R1())
        end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours_left)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(end - dt.timedelta(hours=160))
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@pytest.fixture
def test_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalCa:
    return LocalCa(tmp_path, monkeypatch)


ACME_STACK = {"certificate": {"source": "acme", "public": "yes"}}


def fallback_pair() -> tuple[bytes, bytes]:
    """What the host's certificate client serves when it has no certificate from the CA."""
    return acme_client.self_signed("127.0.0.1", 365)


@pytest.mark.parametrize("served", ["expired", "fallback"])
def test_wake_waits_while_an_acme_host_renews_its_certificate_at_boot(gcp, stack_outputs, test_ca, served):
    """A host stopped longer than its 160-hour certificate lasts boots with it expired (or on its
    self-signed fallback); its client renews at boot, and wake waits for that instead of failing,
    never sending the URL secret to the certificate it cannot trust."""
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "TERMINATED"
    deployed_pair = test_ca.issue(hours_left=150)  # what the last deploy installed (and recorded)
    first = test_ca.issue(hours_left=-40) if served == "expired" else fallback_pair()
    with stand_in_host(Host(pair=first)) as host:
        deployed(stack_outputs, host, GCP_VM, cert_sha256=fingerprint_sha256(deployed_pair[0]), **ACME_STACK)
        renewed = test_ca.issue(hours_left=160)
        said: list[str] = []

        def say(line: str) -> None:
            said.append(line)
            if "waiting for" in line and host.cert_pem == first[0]:
                assert host.asked == []  # nothing, the secret least of all, went to it
                host.renew(*renewed)  # the certificate client's run at boot

        result = wake_module.wake(read_stack_outputs(STACK, Path.cwd()), Path.cwd(), timeout_s=60, say=say)
    assert result.started and host.predictions() == 1 and host.cert_pem == renewed[0]
    waited = next(line for line in said if "waiting for" in line)
    assert SECRET not in waited
    if served == "expired":
        assert "it serves a certificate that expired at " in waited
    else:
        assert "it serves its self-signed fallback certificate, not one from the CA" in waited


@pytest.mark.parametrize("served", ["expired", "fallback"])
def test_wake_says_in_one_line_when_an_acme_host_keeps_a_certificate_it_cannot_trust(
    gcp, stack_outputs, test_ca, served
):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    pair = test_ca.issue(hours_left=-40) if served == "expired" else fallback_pair()
    with stand_in_host(Host(pair=pair)) as host:
        deployed(stack_outputs, host, GCP_VM, cert_sha256="AB:" * 31 + "AB", **ACME_STACK)
        with pytest.raises(wake_module.WakeError) as failed:
            wake_module.wake(read_stack_outputs(STACK, Path.cwd()), Path.cwd(), timeout_s=1, say=print)
    line = str(failed.value)
    assert "\n" not in line and host.asked == []
    expected = "serves a certificate that expired at " if served == "expired" else "self-signed fallback"
    assert expected in line and fingerprint_sha256(pair[0]) in line
    assert "sudo journalctl -t synthdet-cert" in line and "synthdet wake" in line


def test_wake_refuses_at_once_an_expired_certificate_that_nothing_renews(gcp, stack_outputs, test_ca):
    """Without ACME the deploy's certificate is renewed by deploys only: waiting is pointless."""
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    pair = test_ca.issue(hours_left=-1)
    with stand_in_host(Host(pair=pair)) as host:
        deployed(stack_outputs, host, GCP_VM, certificate={"source": "self-signed", "public": "no"})
        done = synthdet("wake", "--stack", STACK, "--timeout", "600")
    assert done.exit_code == 1 and "expired at" in done.output and "pulumi up" in done.output
    assert host.asked == []


def test_status_of_an_acme_host_with_an_expired_certificate_says_so(gcp, stack_outputs, test_ca):
    gcp.instances[("us-central1-b", GCP_VM["name"])] = "RUNNING"
    with stand_in_host(Host(pair=test_ca.issue(hours_left=-40))) as host:
        deployed(stack_outputs, host, GCP_VM, **ACME_STACK)
        found = json.loads(synthdet("status", "--stack", STACK, "--json").output)
        text = synthdet("status", "--stack", STACK).output
    assert found["state"] == "running" and found["certificate"]["expired"] is True
    assert found["certificate"]["public"] is False and host.asked == []
    assert "certificate: expired at " in text and "sudo journalctl -t synthdet-cert" in text
    assert "self-signed fallback" not in text  # it is the CA's, only old
    assert "idle clock: not read (it serves a certificate that expired at " in text
