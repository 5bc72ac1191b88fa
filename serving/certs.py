"""Self-signed TLS certificates and their fingerprints (the app accepts any cert).

Users compare the SHA-256 fingerprint printed at deploy time with what their
client sees, so the fingerprint format follows browsers: `AB:CD:...`.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def make_self_signed(names: Sequence[str], days: int = 825) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) valid for every name or IP in `names`."""
    if not names:
        raise ValueError("a certificate needs at least one host name or IP address")
    # RSA, not EC: TorchServe's Java TLS loader (used by `serve --https`) reads only RSA keys.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(name) for name in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def fingerprint_sha256(cert_pem: bytes) -> str:
    """`AB:CD:...` SHA-256 fingerprint of the certificate's DER encoding."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    digest = certificate.fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


def pinned_context(cert_pem: bytes) -> ssl.SSLContext:
    """TLS that trusts exactly this certificate, self-signed or not.

    A deploy's own checks use it for the certificate it has just installed, so
    they talk to that server and nothing in between, without a CA. Only the
    first certificate of `cert_pem` (the server's own: a user's full chain has
    its CAs after it) becomes the trust anchor, through the partial-chain flag:
    trusting the whole chain would accept any certificate that CA issued. The
    name is not checked on top, since only the holder of this very
    certificate's key can complete the handshake anyway (and a user's own
    certificate may name a domain while the deploy uses an IP).
    """
    leaf = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.PEM)
    context = ssl.create_default_context(cadata=leaf.decode("ascii"))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS 1.2+ for a server with this certificate and key (`synthdet serve --https`)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
