"""Get and renew a publicly trusted certificate for this host's address over ACME: runs ON THE HOST.

`bootstrap/steps/acme.py` uploads this file to the host and runs it as root with the
service venv's Python from `synthdet-cert.service`: once at deploy, then hourly from
`synthdet-cert.timer`. It imports nothing from this project (the standard library,
`acme`, certbot's protocol library, and `cryptography`: bootstrap/requirements/service.in).

The challenge is TLS-ALPN-01 (RFC 8737; RFC 8738 for IP addresses) through the public
port 443, so no other port opens: nginx's stream module sends a TLS ClientHello that
offers the ALPN protocol `acme-tls/1` (only an ACME CA sends that) to the responder here,
which listens on a loopback port below 1024 (root's: no local user can answer for the
host) only while an order is being validated; everything else goes to the site. acme 5
dropped its TLS-ALPN-01 classes, so they are defined here.

A valid certificate is reused until it is due (half its lifetime, or earlier when the
CA's renewal information says so), so reruns never spend the CA's rate limits. Each run
that does something says so in ONE line (the journal: `journalctl -t synthdet-cert`)
and records it in a status file (`synthdet status`, the deploy). When getting a
certificate fails, the current one is kept while it has more than `fallback_hours`
left, else a self-signed one is served (the phone app accepts any certificate), and
the timer tries again within the hour. Exit status: 0 fine, 1 failed, 2 bad config.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import syslog
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

UTC = dt.timezone.utc
ALPN_PROTOCOL = "acme-tls/1"
# RFC 8737 id-pe-acmeIdentifier: the validation certificate's proof of the key authorization.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
CHALLENGE = "tls-alpn-01"
IDENTIFIER = "synthdet-cert"  # the journal's SYSLOG_IDENTIFIER (the unit sets the same)
SELF_SIGNED_CN = "synthdet self-signed"
SELF_SIGNED_DAYS = 365
# When the CA gives no renewal information, or fetching it failed: ask again after this.
ARI_RETRY = dt.timedelta(hours=6)
# A reload only signals nginx's master; new workers serve the new certificate a moment later.
SERVED_WAIT_S = 15.0


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The answer POSTed to the CA: an empty object (RFC 8737 section 3)."""

    typ = CHALLENGE


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """TLS-ALPN-01: the CA connects to port 443 offering ALPN acme-tls/1 and checks the
    certificate it is shown (see `validation_certificate`)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> None:
        return None  # the validation is a certificate served by AlpnResponder


class ClientError(Exception):
    """Getting or installing a certificate failed; the message is the one line that says why."""


@dataclass(frozen=True)
class Config:
    """What the deploy wrote to /etc/synthdet/acme.json (bootstrap/steps/acme.py)."""

    # The address in URLs: an IP address (Let's Encrypt's short-lived IP certificates) or a DNS name.
    name: str
    directory: str
    cert_file: Path
    key_file: Path
    state_dir: Path
    # Loopback port nginx's stream splitter sends acme-tls/1 handshakes to.
    alpn_port: int
    # Where nginx serves the certificate on 127.0.0.1 (checked after a reload); None: do not wait.
    check_port: int | None
    test_command: tuple[str, ...]
    reload_command: tuple[str, ...]
    email: str | None = None
    # CA certificates for the ACME server's own HTTPS (private CAs, tests); None: the system's.
    ca_file: str | None = None
    # Asked for when the CA offers it: Let's Encrypt issues IP certificates in "shortlived" only.
    profile: str = "shortlived"
    # Renew once this fraction of the lifetime has passed (or the CA's renewal window opened).
    renew_at: float = 0.5
    # A certificate that cannot be renewed is replaced by a self-signed one this close to expiry.
    fallback_hours: float = 24.0
    timeout_s: float = 120.0

    @classmethod
    def from_json(cls, text: str) -> Config:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        for key in ("cert_file", "key_file", "state_dir"):
            data[key] = Path(data[key])
        for key in ("test_command", "reload_command"):
            data[key] = tuple(data[key])
        return cls(**data)

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def account_key_file(self) -> Path:
        return self.state_dir / "account-key.pem"

    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.name)
        except ValueError:
            return None


# ---------------------------------------------------------------- certificates and files


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def parse_iso(text: object) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def fingerprint(cert: x509.Certificate) -> str:
    """`AB:CD:...`, as the deploy prints it (serving/certs.py)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def san_for(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def covers(cert: x509.Certificate, name: str) -> bool:
    """Whether the certificate names `name` in its SAN (an IP or a DNS name)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = san_for(name)
    return any(entry == wanted for entry in san)


def self_signed(
    name: str,
    days: float,
    extension: x509.ExtensionType | None = None,
    *,
    start: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `name`, valid `days` from `start` (default: 5 minutes
    ago); with `extension` (critical): a TLS-ALPN-01 validation certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_CN)])
    if start is None:
        start = now_utc() - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san_for(name)]), critical=False)
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def validation_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737: the name in the SAN and, in a critical acmeIdentifier extension, the
    DER OCTET STRING of SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode()).digest()
    proof = x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest)
    return self_signed(name, 1, proof)


def read_leaf(path: Path) -> x509.Certificate | None:
    """The first certificate of a PEM file (the server's own), or None."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a temporary beside `path` (created with `mode`), fsync, rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ---------------------------------------------------------------- the TLS-ALPN-01 responder


class AlpnResponder:
    """Answers `acme-tls/1` handshakes with the validation certificate on a loopback port.

    nginx's stream server speaks PROXY protocol to every backend (the site needs the
    client's address), so a leading PROXY v1 line is skipped. The CA validates from
    several places at once: one thread per connection.
    """

    def __init__(self, port: int, cert_pem: bytes, key_pem_bytes: bytes) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.set_alpn_protocols([ALPN_PROTOCOL])
        with tempfile.TemporaryDirectory(prefix="synthdet-alpn-") as tmp:
            cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            write_atomic(cert_file, cert_pem, 0o600)
            write_atomic(key_file, key_pem_bytes, 0o600)
            self._context.load_cert_chain(cert_file, key_file)
        self._socket = socket.create_server(("127.0.0.1", port))
        self.handshakes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            head = conn.recv(108, socket.MSG_PEEK)  # a PROXY v1 line is at most 107 bytes
            if head.startswith(b"PROXY ") and b"\r\n" in head:
                conn.recv(head.index(b"\r\n") + 2)
            with self._context.wrap_socket(conn, server_side=True) as tls:
                if tls.selected_alpn_protocol() == ALPN_PROTOCOL:
                    self.handshakes += 1
        except OSError:  # ssl.SSLError included: a client that is not the CA
            pass
        finally:
            conn.close()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone leaves the port bound
        # while it waits (Linux), and a second order in this process could not listen there.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


# ---------------------------------------------------------------- the ACME conversation


def open_account(cfg: Config) -> client.ClientV2:
    """The account of this host's key (made on first use), with the CA's terms agreed to."""
    if not cfg.account_key_file.exists():
        write_atomic(cfg.account_key_file, key_pem(rsa.generate_private_key(65537, 2048)), 0o600)
    private = serialization.load_pem_private_key(cfg.account_key_file.read_bytes(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    net = client.ClientNetwork(jose.JWKRSA(key=private), user_agent=IDENTIFIER, verify_ssl=verify(cfg))
    acme = client.ClientV2(messages.Directory.from_json(net.get(cfg.directory).json()), net)
    # Agreeing to the CA's terms is explicit: the deploy named them (Let's Encrypt's subscriber
    # agreement by default) and the status file records the URL the directory gives.
    registration = messages.NewRegistration.from_data(email=cfg.email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:  # the key has an account already: use it
        existing = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        acme.query_registration(existing)
    return acme


def verify(cfg: Config) -> bool:
    """What ClientNetwork hands requests as `verify`: True, or the CA file (requests takes a
    path there too; acme's annotation says bool only)."""
    return cfg.ca_file or True  # type: ignore[return-value]


def account_key(acme: client.ClientV2) -> jose.JWK:
    key = acme.net.key
    assert key is not None  # open_account made the network with the account's key
    return key


def terms_of_service(acme: client.ClientV2) -> str | None:
    meta = acme.directory.meta
    return str(meta.terms_of_service) if meta.terms_of_service else None


def order_profile(acme: client.ClientV2, wanted: str) -> str | None:
    """`wanted` when the CA offers it (Let's Encrypt: IP certificates only as "shortlived")."""
    offered = getattr(acme.directory.meta, "profiles", None) or {}
    return wanted if wanted in offered else None


def issue(acme: client.ClientV2, cfg: Config) -> tuple[bytes, bytes, str | None]:
    """(full chain PEM, key PEM, profile) of a new certificate for cfg.name, via TLS-ALPN-01."""
    new_key = key_pem(ec.generate_private_key(ec.SECP256R1()))
    address = cfg.address()
    csr = (
        acme_crypto.make_csr(new_key, ipaddrs=[address])
        if address is not None
        else acme_crypto.make_csr(new_key, domains=[cfg.name])
    )
    profile = order_profile(acme, cfg.profile)
    order = acme.new_order(csr, profile=profile)
    pending = [a for a in order.authorizations if a.body.status != messages.STATUS_VALID]
    with contextlib.ExitStack() as stack:
        for authorization in pending:
            offered = {c.chall.typ: c for c in authorization.body.challenges}
            if CHALLENGE not in offered:
                raise ClientError(f"the ACME server offers {sorted(offered)} for {cfg.name}, not {CHALLENGE}")
            challenge = offered[CHALLENGE]
            assert isinstance(challenge.chall, challenges.KeyAuthorizationChallenge)
            cert_pem, cert_key = validation_certificate(
                cfg.name, challenge.chall.key_authorization(account_key(acme))
            )
            responder = AlpnResponder(cfg.alpn_port, cert_pem, cert_key)
            stack.callback(responder.close)
            acme.answer_challenge(challenge, challenge.chall.response(account_key(acme)))
        deadline = dt.datetime.now() + dt.timedelta(seconds=cfg.timeout_s)
        order = acme.poll_and_finalize(order, deadline)
    return order.fullchain_pem.encode(), new_key, profile


def ari_renewal_time(cfg: Config, status: dict[str, Any], cert_pem: bytes, now: dt.datetime) -> None:
    """Ask the CA when to renew (ACME Renewal Information), when its last answer says to ask
    again; the answer goes into `status` (renew_after_ari, ari_next). Never fails a run."""
    due = parse_iso(status.get("ari_next"))
    if due is not None and now < due:
        return
    try:
        # Renewal information is fetched without an account (a plain GET).
        net = client.ClientNetwork(None, user_agent=IDENTIFIER, verify_ssl=verify(cfg))  # type: ignore[arg-type]
        acme = client.ClientV2(messages.Directory.from_json(net.get(cfg.directory).json()), net)
        when, ask_again = acme.renewal_time(cert_pem)
    except Exception:  # noqa: BLE001 - no renewal information: half the lifetime decides
        status.update(ari_next=iso(now + ARI_RETRY))
        return
    status.update(
        renew_after_ari=iso(when.astimezone(UTC) if when is not None else None),
        ari_next=iso(ask_again.astimezone(UTC)),
    )


# ---------------------------------------------------------------- decisions


def renew_after(cert: x509.Certificate, renew_at: float, ari: dt.datetime | None = None) -> dt.datetime:
    """When the certificate is due: `renew_at` of its lifetime, or the CA's window if sooner."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    by_lifetime = cert.not_valid_before_utc + lifetime * renew_at
    return min(by_lifetime, ari) if ari is not None else by_lifetime


def is_acme_certificate_in_place(cfg: Config, status: dict[str, Any], leaf: x509.Certificate | None) -> bool:
    """The file holds the certificate this client got from this CA for this name."""
    return (
        leaf is not None
        and status.get("source") == "acme"
        and status.get("sha256") == fingerprint(leaf)
        and status.get("name") == cfg.name
        and status.get("directory") == cfg.directory
        and covers(leaf, cfg.name)
    )


def must_fall_back(cfg: Config, leaf: x509.Certificate | None, acme_in_place: bool, now: dt.datetime) -> bool:
    """After a failure: serve a self-signed certificate now? Only when nothing usable is
    served (none, another name, expired) or an ACME certificate is about to expire."""
    if leaf is None or not covers(leaf, cfg.name) or leaf.not_valid_after_utc <= now:
        return True
    left = leaf.not_valid_after_utc - now
    return acme_in_place and left < dt.timedelta(hours=cfg.fallback_hours)


def describe(exc: BaseException, cfg: Config) -> str:
    """One line saying what went wrong and what to check."""
    if isinstance(exc, errors.ValidationError):
        details = "; ".join(
            f"{c.chall.typ}: {c.error.detail}"
            for a in exc.failed_authzrs
            for c in a.body.challenges
            if c.error is not None
        )
        return (
            f"the CA could not validate {cfg.name} ({details}); is port 443 open to the internet "
            "(firewall, security group, endpointCidrs)?"
        )
    if isinstance(exc, messages.Error):  # rateLimited, rejectedIdentifier, unauthorized ...
        return f"the ACME server refused: {exc.code or exc.typ}: {exc.detail}"
    if isinstance(exc, errors.IssuanceError):
        return f"the ACME server would not issue: {exc.error.detail}"
    if isinstance(exc, errors.TimeoutError):
        return f"the ACME server did not finish the order within {cfg.timeout_s:.0f} s"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"cannot reach the ACME server {cfg.directory}: {root_cause(exc)}"
    if isinstance(exc, ClientError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while (seen.__cause__ or seen.__context__) is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return seen


# ---------------------------------------------------------------- installing


def run_command(command: Sequence[str], what: str) -> None:
    if not command:
        return
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        why = next((line for line in lines if "[emerg]" in line), lines[0])
        raise ClientError(f"{what} failed: {why}")


def served_fingerprint(port: int) -> str | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return fingerprint(x509.load_der_x509_certificate(der)) if der else None


def wait_served(port: int, wanted: str, timeout_s: float = SERVED_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served_fingerprint(port) == wanted:
            return True
        time.sleep(0.1)
    return False


def install(cfg: Config, chain_pem: bytes, new_key_pem: bytes) -> x509.Certificate:
    """Key first, then the certificate; `nginx -t` (the old pair is put back if it fails);
    a graceful reload; then wait until nginx serves it. Returns the new leaf."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    private = serialization.load_pem_private_key(new_key_pem, None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise ClientError("the new certificate does not match its key")
    old = [(path, path.read_bytes()) for path in (cfg.key_file, cfg.cert_file) if path.exists()]
    write_atomic(cfg.key_file, new_key_pem, 0o600)
    write_atomic(cfg.cert_file, chain_pem, 0o644)
    try:
        run_command(cfg.test_command, "nginx's configuration test with the new certificate")
    except ClientError:
        for path, data in old:
            write_atomic(path, data, 0o600 if path == cfg.key_file else 0o644)
        raise
    run_command(cfg.reload_command, "reloading nginx")
    if cfg.check_port is not None and not wait_served(cfg.check_port, fingerprint(leaf)):
        raise ClientError(f"nginx still serves the old certificate {SERVED_WAIT_S:.0f} s after the reload")
    return leaf


# ---------------------------------------------------------------- status and journal


def read_status(cfg: Config) -> dict[str, Any]:
    try:
        data = json.loads(cfg.status_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(cfg: Config, status: dict[str, Any]) -> None:
    write_atomic(cfg.status_file, (json.dumps(status, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def certificate_facts(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "sha256": fingerprint(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": iso(cert.not_valid_before_utc),
        "not_after": iso(cert.not_valid_after_utc),
    }


def say(line: str, *, warning: bool = False) -> None:
    """The run's one line: stdout (the journal, under the unit) and, run by hand, syslog."""
    print(line, flush=True)
    if not os.environ.get("JOURNAL_STREAM"):  # not under systemd: put it in the journal too
        syslog.openlog(IDENTIFIER)
        syslog.syslog(syslog.LOG_WARNING if warning else syslog.LOG_INFO, line)
        syslog.closelog()


def hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.0f} h"


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """One run at a time (the timer's and one started by hand)."""
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- a run


def renew(cfg: Config, *, force: bool = False) -> int:
    """Reuse, renew or fall back; one line when something happened; the exit status."""
    now = now_utc()
    status = read_status(cfg)
    leaf = read_leaf(cfg.cert_file)
    acme_in_place = is_acme_certificate_in_place(cfg, status, leaf)
    if acme_in_place and not force:
        assert leaf is not None
        ari_renewal_time(cfg, status, cfg.cert_file.read_bytes(), now)
        due = renew_after(leaf, cfg.renew_at, parse_iso(status.get("renew_after_ari")))
        if now < due:
            status.update(renew_after=iso(due), checked_at=iso(now))
            write_status(cfg, status)
            return 0
    try:
        acme = open_account(cfg)
        chain, new_key, profile = issue(acme, cfg)
    except Exception as exc:  # noqa: BLE001 - any failure: keep serving, say why, retry hourly
        return failed(cfg, status, leaf, acme_in_place, reason_for(exc, cfg), now)
    install_error = None
    try:
        leaf = install(cfg, chain, new_key)
    except Exception as exc:  # noqa: BLE001
        on_disk = read_leaf(cfg.cert_file)
        if on_disk is None or fingerprint(on_disk) != fingerprint(x509.load_pem_x509_certificate(chain)):
            return failed(cfg, status, on_disk, acme_in_place, reason_for(exc, cfg), now)
        # The new pair is on disk, only the reload or its check failed (nginx takes it at
        # its next reload). Record it as this CA's certificate: otherwise every hourly run
        # would order another one and meet the CA's limit on duplicate certificates.
        leaf, install_error = on_disk, reason_for(exc, cfg)
    status = {
        "source": "acme",
        "name": cfg.name,
        "directory": cfg.directory,
        **certificate_facts(leaf),
        "renew_after": iso(renew_after(leaf, cfg.renew_at)),
        "checked_at": iso(now),
        "last_error": install_error,
        "last_error_at": iso(now) if install_error else None,
        "terms_of_service": terms_of_service(acme),
    }
    write_status(cfg, status)
    line = (
        f"new certificate for {cfg.name} from {leaf.issuer.rfc4514_string()} ({CHALLENGE}, profile "
        f"{profile or 'default'}), valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, "
        f"renewing after {status['renew_after']}"
    )
    if install_error:
        say(f"{line}; in place on disk, but {install_error}", warning=True)
        return 1
    say(line)
    return 0


def reason_for(exc: BaseException, cfg: Config) -> str:
    """A failure's one line, short enough for the journal and the status file."""
    return describe(exc, cfg).splitlines()[0][:500]


def failed(
    cfg: Config,
    status: dict[str, Any],
    leaf: x509.Certificate | None,
    acme_in_place: bool,
    reason: str,
    now: dt.datetime,
) -> int:
    """Keep the current certificate, or serve a self-signed one; one line either way."""
    how = f"could not get a certificate for {cfg.name} from {cfg.directory}: {reason}"
    if must_fall_back(cfg, leaf, acme_in_place, now):
        cert_pem, new_key = self_signed(cfg.name, SELF_SIGNED_DAYS)
        try:
            leaf = install(cfg, cert_pem, new_key)
        except ClientError as exc:
            say(f"{how}; and the self-signed certificate could not be installed either: {exc}", warning=True)
            return 1
        source = "self-signed"
        kept = "serving a self-signed certificate now (browsers warn; the app accepts it)"
    else:
        assert leaf is not None
        source = "acme" if acme_in_place else "self-signed"
        kept = f"keeping the current {source} certificate ({hours(leaf.not_valid_after_utc - now)} left)"
    terms = status.get("terms_of_service")
    status = {
        **(status if source == "acme" else {}),
        "source": source,
        "name": cfg.name,
        "directory": cfg.directory,
        **certificate_facts(leaf),
        "checked_at": iso(now),
        "last_error": reason,
        "last_error_at": iso(now),
        "terms_of_service": terms,
    }
    status.setdefault("renew_after", None)
    write_status(cfg, status)
    say(f"{how}; {kept}; trying again within the hour", warning=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/etc/synthdet/acme.json"))
    parser.add_argument("--force", action="store_true", help="renew now, even when not due")
    args = parser.parse_args(argv)
    try:
        cfg = Config.from_json(args.config.read_text())
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(cfg.state_dir):
        return renew(cfg, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
