"""The host's ACME client, piece by piece: the TLS-ALPN-01 proof, when to renew or fall back,
the one line that says why, and installing a pair without ever leaving a broken one.
(Against a real ACME server: tests/integration/test_acme_client.py.)"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import socket
import ssl
from pathlib import Path

import pytest
import requests
from acme import errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bootstrap import acme_client as ac

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def config(tmp_path: Path, **changes: object) -> ac.Config:
    (tmp_path / "tls").mkdir(exist_ok=True)
    values: dict[str, object] = {
        "name": "203.0.113.7",
        "directory": "https://ca.example/dir",
        "cert_file": tmp_path / "tls" / "cert.pem",
        "key_file": tmp_path / "tls" / "key.pem",
        "state_dir": tmp_path / "state",
        "alpn_port": 0,
        "check_port": None,
        "test_command": (),
        "reload_command": (),
        **changes,
    }
    return ac.Config(**values)  # type: ignore[arg-type]


def certificate(name: str, start: dt.datetime, hours: float) -> x509.Certificate:
    """A certificate for `name` valid from `start` for `hours` (self-signed: only times matter)."""
    cert_pem, _ = ac.self_signed(name, hours / 24, start=start)
    return x509.load_pem_x509_certificate(cert_pem)


def test_the_validation_certificate_carries_the_key_authorization_digest() -> None:
    cert_pem, _ = ac.validation_certificate("203.0.113.7", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    assert ext.critical
    # RFC 8737: a DER OCTET STRING (tag 4, length 32) of SHA-256 over the key authorization.
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.IPAddress(ipaddress.ip_address("203.0.113.7"))]


def test_a_dns_name_gets_a_dns_san() -> None:
    cert_pem, _ = ac.validation_certificate("gpu.example.org", "a.b")
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert list(san.value) == [x509.DNSName("gpu.example.org")]


def test_renewal_at_half_the_lifetime_or_the_cas_window_if_sooner() -> None:
    cert = certificate("203.0.113.7", NOW, 160)
    assert ac.renew_after(cert, 0.5) == NOW + dt.timedelta(hours=80)
    sooner = NOW + dt.timedelta(hours=10)
    assert ac.renew_after(cert, 0.5, sooner) == sooner
    assert ac.renew_after(cert, 0.5, NOW + dt.timedelta(hours=120)) == NOW + dt.timedelta(hours=80)


def test_falling_back_only_when_nothing_usable_is_served_or_acmes_is_about_to_expire(tmp_path: Path) -> None:
    cfg = config(tmp_path, fallback_hours=24)
    fresh = certificate("203.0.113.7", NOW - dt.timedelta(hours=100), 160)  # 60 h left
    ending = certificate("203.0.113.7", NOW - dt.timedelta(hours=150), 160)  # 10 h left
    expired = certificate("203.0.113.7", NOW - dt.timedelta(hours=170), 160)
    other = certificate("198.51.100.9", NOW, 160)
    assert ac.must_fall_back(cfg, None, False, NOW)
    assert ac.must_fall_back(cfg, other, False, NOW)  # names another address
    assert ac.must_fall_back(cfg, expired, True, NOW)
    assert ac.must_fall_back(cfg, ending, True, NOW)
    assert not ac.must_fall_back(cfg, fresh, True, NOW)
    # The deploy's self-signed certificate (not the CA's) is kept while it names the address.
    assert not ac.must_fall_back(cfg, ending, False, NOW)


def test_only_the_cas_certificate_for_this_name_and_directory_counts_as_in_place(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cert = certificate("203.0.113.7", NOW, 160)
    status = {"source": "acme", "sha256": ac.fingerprint(cert), "name": cfg.name, "directory": cfg.directory}
    assert ac.is_acme_certificate_in_place(cfg, status, cert)
    assert not ac.is_acme_certificate_in_place(cfg, {**status, "source": "self-signed"}, cert)
    assert not ac.is_acme_certificate_in_place(cfg, {**status, "name": "198.51.100.9"}, cert)
    assert not ac.is_acme_certificate_in_place(cfg, {**status, "directory": "https://other/dir"}, cert)
    # Somebody replaced the file: the status is about another certificate.
    assert not ac.is_acme_certificate_in_place(cfg, status, certificate("203.0.113.7", NOW, 160))
    assert not ac.is_acme_certificate_in_place(cfg, status, None)


def test_each_failure_is_one_line_that_says_what_to_check(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise requests.exceptions.ConnectionError("HTTPSConnectionPool(...)") from exc
    except requests.exceptions.RequestException as exc:
        unreachable = ac.describe(exc, cfg)
    assert (
        unreachable == "cannot reach the ACME server https://ca.example/dir: [Errno 111] Connection refused"
    )
    limited = messages.Error.with_code("rateLimited", detail="too many certificates (5) for this exact set")
    assert ac.describe(limited, cfg) == (
        "the ACME server refused: rateLimited: too many certificates (5) for this exact set"
    )
    assert ac.describe(errors.TimeoutError(), cfg) == "the ACME server did not finish the order within 120 s"
    for line in (unreachable, ac.describe(limited, cfg)):
        assert "\n" not in line


def test_the_responder_answers_acme_tls_behind_a_proxy_protocol_line(tmp_path: Path) -> None:
    cert_pem, key = ac.validation_certificate("203.0.113.7", "token.thumbprint")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    responder = ac.AlpnResponder(port, cert_pem, key)
    try:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_alpn_protocols(["acme-tls/1"])
        for preamble in (b"PROXY TCP4 198.51.100.1 127.0.0.1 51000 443\r\n", b""):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(preamble)
                with context.wrap_socket(raw, server_hostname="7.113.0.203.in-addr.arpa") as tls:
                    assert tls.selected_alpn_protocol() == "acme-tls/1"
                    served = tls.getpeercert(binary_form=True)
                    assert served == x509.load_pem_x509_certificate(cert_pem).public_bytes(
                        serialization.Encoding.DER
                    )
    finally:
        responder.close()


def test_a_pair_nginx_rejects_is_taken_back(tmp_path: Path) -> None:
    cfg = config(tmp_path, test_command=("false",))
    old_cert, old_key = ac.self_signed(cfg.name, 1)
    cfg.cert_file.write_bytes(old_cert)
    cfg.key_file.write_bytes(old_key)
    new_cert, new_key = ac.self_signed(cfg.name, 1)
    with pytest.raises(ac.ClientError, match="nginx's configuration test with the new certificate failed"):
        ac.install(cfg, new_cert, new_key)
    assert (cfg.cert_file.read_bytes(), cfg.key_file.read_bytes()) == (old_cert, old_key)


def test_a_certificate_that_does_not_match_its_key_is_never_written(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cert, _ = ac.self_signed(cfg.name, 1)
    _, other_key = ac.self_signed(cfg.name, 1)
    with pytest.raises(ac.ClientError, match="does not match its key"):
        ac.install(cfg, cert, other_key)
    assert not cfg.cert_file.exists() and not cfg.key_file.exists()


def test_installed_files_are_private_where_they_must_be(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cert, key = ac.self_signed(cfg.name, 1)
    ac.install(cfg, cert, key)
    assert cfg.key_file.stat().st_mode & 0o777 == 0o600
    assert cfg.cert_file.stat().st_mode & 0o777 == 0o644


def test_a_bad_config_is_exit_2_with_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "acme.json"
    path.write_text(json.dumps({"name": "203.0.113.7", "surprise": 1}))
    assert ac.main(["--config", str(path)]) == 2
    assert "unknown settings ['surprise']" in capsys.readouterr().err


def test_a_certificate_on_disk_whose_reload_failed_is_not_ordered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the new pair was written, then nginx's reload failed; the status kept
    the old fingerprint, so every hourly run ordered a new certificate (the CA's duplicate
    limit: 5 a week at Let's Encrypt)."""
    cfg = config(tmp_path, reload_command=("false",))
    cfg.state_dir.mkdir()
    orders: list[str] = []

    def issue(_acme: object, _cfg: ac.Config) -> tuple[bytes, bytes, str | None]:
        orders.append(_cfg.name)
        cert_pem, key = ac.self_signed(_cfg.name, 6)  # stands in for the CA's 6-day certificate
        return cert_pem, key, "shortlived"

    monkeypatch.setattr(ac, "open_account", lambda _cfg: object())
    monkeypatch.setattr(ac, "issue", issue)
    monkeypatch.setattr(ac, "terms_of_service", lambda _acme: None)
    assert ac.renew(cfg) == 1  # the reload failed: said, as a warning
    status = ac.read_status(cfg)
    leaf = ac.read_leaf(cfg.cert_file)
    assert leaf is not None and status["sha256"] == ac.fingerprint(leaf) and status["source"] == "acme"
    assert "reloading nginx" in status["last_error"]
    assert ac.renew(cfg) == 0 and orders == [cfg.name]  # in place and not due: no second order
