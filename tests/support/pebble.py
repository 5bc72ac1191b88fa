"""Let's Encrypt's ACME test server (Debian's `pebble`) for the certificate tests.

Pebble validates for real: for an IP identifier it connects to that address itself,
on `tls_port` for TLS-ALPN-01, so on a test host it runs on the host side of the
guest's network and validates against the guest's port 443. Debian's package ships no
TLS certificate for its own HTTPS (the `+ds` repack dropped them), so one is made here,
signed by a small CA of this run's: that CA plus the roots pebble issues under (new at
every pebble start) is the bundle `synthdet deploy --acme-ca` takes (`trust_bundle`).

Environment for real validation: no random 0-15 s sleeps before validating
(PEBBLE_VA_NOSLEEP), no deliberately rejected nonces (PEBBLE_WFE_NONCEREJECT=0: the
acme library retries a bad nonce only once), no reuse of valid authorizations
(PEBBLE_AUTHZREUSE=0: a renewal must validate again), and never "always valid".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from serving.polling import poll

PEBBLE = "/usr/bin/pebble"
# Let's Encrypt's "shortlived" profile (IP certificates): 160 hours.
SHORTLIVED_S = 160 * 3600
REAL_VALIDATION = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}


def require_pebble() -> None:
    """Skip where Debian's pebble is missing (`./dev setup` installs it)."""
    if not shutil.which(PEBBLE):
        pytest.skip("needs Debian's pebble (./dev setup installs it)")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_server_tls(ip: str, directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) files for pebble's HTTPS on `ip`."""
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("pebble test CA"))
        .issuer_name(_name("pebble test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    addresses = {ipaddress.ip_address(ip), ipaddress.ip_address("127.0.0.1")}
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("pebble"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(a) for a in addresses]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = directory / "tls-ca.pem", directory / "tls-cert.pem", directory / "tls-key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(_pem(key))
    files[2].chmod(0o600)
    return files


@dataclass
class Pebble:
    """One pebble server listening on `ip` and validating on `tls_port` of the identifiers."""

    ip: str
    workdir: Path
    tls_port: int = 443
    http_port: int = 80
    acme_port: int = 14000
    management_port: int = 15000
    validity_s: int = SHORTLIVED_S
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls_ca, cert, key = make_server_tls(self.ip, self.workdir)
        config = {
            "pebble": {
                "listenAddress": f"{self.ip}:{self.acme_port}",
                "managementListenAddress": f"{self.ip}:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": self.validity_s,
            }
        }
        self.config = self.workdir / "pebble-config.json"
        self.config.write_text(json.dumps(config))
        self.log = self.workdir / "pebble.log"

    @property
    def directory_url(self) -> str:
        return f"https://{self.ip}:{self.acme_port}/dir"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30.0) -> Pebble:
        """Start it and wait until its directory answers."""
        if self.running:
            return self
        env = {**os.environ, **REAL_VALIDATION}
        env.pop("PEBBLE_VA_ALWAYS_VALID", None)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [PEBBLE, "-config", str(self.config), "-strict=false"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        up, answer = poll(self._directory, lambda ok: ok is True, timeout_s=timeout_s, every_s=0.1)
        if not up:
            self.stop()
            raise RuntimeError(f"pebble did not answer on {self.directory_url} ({answer}): {self.log_tail()}")
        return self

    def _directory(self) -> bool | str:
        if not self.running:
            return f"exited ({self._process.returncode if self._process else '?'})"
        try:
            return httpx.get(self.directory_url, verify=self._trust(), timeout=2).status_code == 200
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"

    def _trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls_ca))

    def stop(self) -> None:
        """Stop it (its accounts, orders and roots are forgotten: the next start has new roots)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def roots(self) -> bytes:
        """The root certificate(s) pebble issues under now (PEM)."""
        url = f"https://{self.ip}:{self.management_port}/roots/0"
        response = httpx.get(url, verify=self._trust(), timeout=10)
        response.raise_for_status()
        return response.content

    def root_file(self, path: Path) -> Path:
        """The issuing root alone, for clients that should trust exactly it (curl, Chromium)."""
        path.write_bytes(self.roots())
        return path

    def trust_bundle(self, path: Path) -> Path:
        """What `--acme-ca` takes: pebble's HTTPS CA and the root it issues under."""
        path.write_bytes(self.tls_ca.read_bytes() + self.roots())
        return path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
