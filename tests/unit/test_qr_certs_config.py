"""QR codes round-trip; certificates carry the right names; TorchServe config is locked down."""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path

import pytest
import zxingcpp
from cryptography import x509
from PIL import Image

from serving.certs import fingerprint_sha256, make_self_signed
from serving.models import ModelSpec
from serving.qr import BLACK_ON_WHITE, render_terminal, write_png
from serving.settings import ServingSettings
from serving.torchserve_config import render_config_properties

URLS = [
    "https://203.0.113.7:8443/predictions/synthdet",
    "https://203.0.113.7/Zx9_kq-3vT0bL1mN2oP3qR4sT5uV6w/predictions/synthdet",
    "http://192.168.1.20:8080/predictions/synthdet?key=abc123",
]


def _decode(image: Image.Image) -> str:
    results = zxingcpp.read_barcodes(image)
    assert results, "no QR code found in the rendering"
    return str(results[0].text)


@pytest.mark.parametrize("url", URLS)
def test_png_round_trip(url: str, tmp_path: Path) -> None:
    path = tmp_path / "qr.png"
    write_png(url, path)
    assert _decode(Image.open(path)) == url


def _terminal_to_image(text: str, scale: int = 8) -> Image.Image:
    """Rebuild the module grid from half-block characters, as a phone camera sees it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    rows: list[list[bool]] = []
    for line in text.splitlines():
        upper = [char in "\u2580\u2588" for char in line]
        lower = [char in "\u2584\u2588" for char in line]
        rows += [upper, lower]
    width = max(len(row) for row in rows)
    image = Image.new("L", ((width + 8) * scale, (len(rows) + 8) * scale), 255)
    for y, row in enumerate(rows):
        for x, dark in enumerate(row):
            if dark:
                image.paste(0, ((x + 4) * scale, (y + 4) * scale, (x + 5) * scale, (y + 5) * scale))
    return image


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("ansi", [True, False])
def test_terminal_round_trip(url: str, ansi: bool) -> None:
    text = render_terminal(url, ansi=ansi)
    assert (BLACK_ON_WHITE in text) == ansi
    assert _decode(_terminal_to_image(text)) == url


def test_certificate_names_and_fingerprint(tmp_path: Path) -> None:
    cert_pem, key_pem = make_self_signed(["203.0.113.7", "synthdet.example.org"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.7"]
    assert san.get_values_for_type(x509.DNSName) == ["synthdet.example.org"]
    assert b"PRIVATE KEY" in key_pem
    path = tmp_path / "cert.pem"
    path.write_bytes(cert_pem)
    openssl = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert openssl.strip().split("=", 1)[1] == fingerprint_sha256(cert_pem)


def test_torchserve_config_keeps_management_local_and_auth_off() -> None:
    text = render_config_properties(
        inference_address="https://0.0.0.0:8443",
        management_address="http://127.0.0.1:8081",
        metrics_address="http://127.0.0.1:8082",
        model_store="/store",
        models={"synthdet": "synthdet.mar", "b": "b.mar"},
        serving=ServingSettings(job_queue_size=7),
        certificate_file="/tls/cert.pem",
        private_key_file="/tls/key.pem",
    )
    properties = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert properties["management_address"].startswith("http://127.0.0.1:")
    assert properties["metrics_address"].startswith("http://127.0.0.1:")
    assert properties["disable_token_authorization"] == "true"
    assert properties["load_models"] == "b=b.mar,synthdet=synthdet.mar"
    assert properties["job_queue_size"] == "7"
    assert properties["certificate_file"] == "/tls/cert.pem"
    assert properties["enable_model_api"] == "false"


@pytest.mark.parametrize(
    ("value", "name", "path"),
    [
        ("model.pth", "synthdet", "model.pth"),
        ("fast=a/b.pth", "fast", "a/b.pth"),
        ("./dir=x/m.pth", "synthdet", "./dir=x/m.pth"),
    ],
)
def test_model_spec_parsing(value: str, name: str, path: str) -> None:
    spec = ModelSpec.parse(value)
    assert (spec.name, str(spec.checkpoint)) == (name, str(Path(path)))


@pytest.mark.parametrize("bad", ["", "a b", "../x", "-x", "x" * 65])
def test_model_names_that_cannot_be_url_segments_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        ModelSpec(bad, Path("x.pth"))


def _issued_by_one_ca(count: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A CA and `count` server certificates it signed: (CA PEM, [(cert PEM, key PEM)])."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])

    def certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    pem = serialization.Encoding.PEM
    ca_pem = certificate(ca_name, ca_key, ca=True).public_bytes(pem)
    leaves = []
    for index in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"server {index}")])
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        leaves.append((certificate(subject, key, ca=False).public_bytes(pem), key_pem))
    return ca_pem, leaves


def _handshake(server_chain: bytes, server_key: bytes, client: ssl.SSLContext, tmp_path: Path) -> None:
    """One TLS handshake on loopback; raises ssl.SSLError when the client refuses."""
    import socket
    import threading

    (tmp_path / "chain.pem").write_bytes(server_chain)
    (tmp_path / "key.pem").write_bytes(server_key)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused: its side raises

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname()[:2], timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="localhost"),
        ):
            pass
        thread.join(10)


def test_a_pinned_certificate_is_the_only_one_trusted_even_from_a_full_chain(tmp_path: Path) -> None:
    from serving.certs import pinned_context

    ca, [(installed, installed_key), (other, other_key)] = _issued_by_one_ca(2)
    # The deploy pins what it installed (a user's fullchain: server certificate, then its CA).
    pinned = pinned_context(installed + ca)
    _handshake(installed + ca, installed_key, pinned, tmp_path)
    # Another server certificate from the same CA: somebody else in between. Refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(other + ca, other_key, pinned, tmp_path)
    # A self-signed one (what deploy makes by default) pins the same way.
    self_signed, self_key = make_self_signed(["localhost"])
    _handshake(self_signed, self_key, pinned_context(self_signed), tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(self_signed, self_key, pinned, tmp_path)
