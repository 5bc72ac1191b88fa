"""The host's ACME client against a real ACME server (Debian's pebble) on this machine.

Pebble validates 127.0.0.1 through TLS-ALPN-01 on a port of this test's, where the
client's responder listens directly (on a host nginx's splitter sits in between: the
system test). nginx itself is not here: the client's test and reload commands are
no-ops and it does not wait for a served certificate.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from bootstrap import acme_client as ac
from tests.support.pebble import Pebble, require_pebble

ADDRESS = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((ADDRESS, 0))
        return int(sock.getsockname()[1])


@dataclass
class Setup:
    pebble: Pebble
    config: Path
    cfg: ac.Config
    roots: Path

    def run(self, *extra: str, **changes: object) -> int:
        if changes:
            data = json.loads(self.config.read_text()) | changes
            self.config.write_text(json.dumps(data))
        return ac.main(["--config", str(self.config), *extra])

    def status(self) -> dict:
        return json.loads(self.cfg.status_file.read_text())

    def leaf(self) -> x509.Certificate:
        leaf = ac.read_leaf(self.cfg.cert_file)
        assert leaf is not None
        return leaf

    def issued(self) -> int:
        """Certificates pebble issued so far (its log)."""
        return self.pebble.log.read_text().count("Issued certificate serial")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    require_pebble()
    monkeypatch.setenv("JOURNAL_STREAM", "test")  # print only: nothing into this machine's syslog
    tls_port = free_port()
    pebble = Pebble(
        ADDRESS,
        tmp_path / "pebble",
        tls_port=tls_port,
        http_port=free_port(),
        acme_port=free_port(),
        management_port=free_port(),
    ).start()
    try:
        (tmp_path / "tls").mkdir()
        values = {
            "name": ADDRESS,
            "directory": pebble.directory_url,
            "ca_file": str(pebble.trust_bundle(tmp_path / "acme-ca.pem")),
            "cert_file": str(tmp_path / "tls" / "cert.pem"),
            "key_file": str(tmp_path / "tls" / "key.pem"),
            "state_dir": str(tmp_path / "state"),
            "alpn_port": tls_port,
            "check_port": None,
            "test_command": [],
            "reload_command": [],
        }
        config = tmp_path / "acme.json"
        config.write_text(json.dumps(values))
        yield Setup(pebble, config, ac.Config.from_json(config.read_text()), tmp_path / "roots.pem")
    finally:
        pebble.stop()


def verifies_for_the_address(cfg: ac.Config, roots: Path) -> bool:
    """A TLS server with the installed chain, and a client that trusts `roots` and checks the IP."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cfg.cert_file, cfg.key_file)
    client_context = ssl.create_default_context(cafile=str(roots))
    with socket.create_server((ADDRESS, 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, server_context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        threading.Thread(target=serve, daemon=True).start()
        try:
            with (
                socket.create_connection((ADDRESS, port), timeout=5) as raw,
                client_context.wrap_socket(raw, server_hostname=ADDRESS) as tls,
            ):
                tls.sendall(b"x")
                return True
        except ssl.SSLCertVerificationError:
            return False


def test_issues_through_tls_alpn_and_reuses_until_due(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run() == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"new certificate for {ADDRESS} from CN=Pebble Intermediate CA")
    assert "(tls-alpn-01," in line and "\n" not in line
    status = setup.status()
    assert status["source"] == "acme" and status["sha256"] == ac.fingerprint(setup.leaf())
    assert status["last_error"] is None and status["terms_of_service"]
    assert verifies_for_the_address(setup.cfg, setup.pebble.root_file(setup.roots))
    # The client's files are root's alone where they hold keys.
    assert setup.cfg.account_key_file.stat().st_mode & 0o777 == 0o600
    assert setup.cfg.status_file.stat().st_mode & 0o777 == 0o600
    assert setup.cfg.state_dir.stat().st_mode & 0o777 == 0o700

    # Not due: nothing asked of the CA, nothing said, the same certificate.
    issued, sha = setup.issued(), status["sha256"]
    assert setup.run() == 0
    assert capsys.readouterr().out == ""
    assert setup.issued() == issued and setup.status()["sha256"] == sha


def test_forced_renewal_swaps_the_certificate(setup: Setup) -> None:
    assert setup.run() == 0
    before = setup.status()["sha256"]
    assert setup.run("--force") == 0
    after = setup.status()["sha256"]
    assert after != before and after == ac.fingerprint(setup.leaf())


def test_the_ca_down_keeps_the_certificate_then_falls_back_and_comes_back(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run() == 0
    acme_sha = setup.status()["sha256"]
    capsys.readouterr()
    setup.pebble.stop()
    # A renewal that fails keeps serving the CA's certificate while it has time left.
    assert setup.run("--force") == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"could not get a certificate for {ADDRESS} from {setup.pebble.directory_url}: ")
    assert "cannot reach the ACME server" in line and "keeping the current acme certificate" in line
    status = setup.status()
    assert status["source"] == "acme" and status["sha256"] == acme_sha
    assert "Connection refused" in status["last_error"]
    # Within the margin before expiry (here: all of its 160 h), a self-signed one is served.
    assert setup.run("--force", fallback_hours=1000) == 1
    assert "serving a self-signed certificate now" in capsys.readouterr().out
    status = setup.status()
    assert status["source"] == "self-signed" and status["sha256"] == ac.fingerprint(setup.leaf())
    assert setup.leaf().issuer.rfc4514_string() == f"CN={ac.SELF_SIGNED_CN}"
    # The CA back: the next (timer) run replaces it, without being forced.
    setup.pebble.start()
    assert setup.run() == 0
    assert setup.status()["source"] == "acme"
    assert verifies_for_the_address(setup.cfg, setup.pebble.root_file(setup.roots))


def test_a_ca_that_cannot_reach_the_responder_says_which_port_to_open(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    # The responder listens elsewhere than where the CA validates: like a closed port 443.
    assert setup.run(alpn_port=free_port()) == 1
    line = capsys.readouterr().out.strip()
    assert f"the CA could not validate {ADDRESS} (tls-alpn-01: " in line
    assert "is port 443 open to the internet" in line
    # Nothing was served before: a self-signed certificate now, and the reason recorded.
    assert setup.status()["source"] == "self-signed" and "tls-alpn-01" in setup.status()["last_error"]
