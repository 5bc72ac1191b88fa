"""A publicly trusted certificate for the endpoint's address (ACME), renewed on the host by itself.

With `options.acme` the host gets its certificate from an ACME CA (Let's Encrypt by
default: for an IP address its short-lived, 160-hour certificates) through TLS-ALPN-01
on port 443, which nginx's stream splitter (steps/nginx.py) hands to the client's
responder: no other port opens. The client (bootstrap/acme_client.py, uploaded here)
runs on the host from `CERT_SERVICE`: now, and hourly from `CERT_TIMER`. It reuses a
valid certificate until half its lifetime has passed (the CA's rate limits), and when it
cannot get one keeps serving the current certificate, falling back to a self-signed one
before that expires. A failure never fails the deploy: the step says why in one line and
the timer tries again.

The step's output says how the deploy's own checks trust the endpoint: a certificate
from the CA is verified (chain to the system's roots, or to `--acme-ca`'s, and the
address); anything else is pinned (serving/certs.py), as without ACME.
"""

from __future__ import annotations

import datetime
import json
import ssl
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import certifi

from bootstrap import files
from bootstrap.runner import Runner
from bootstrap.steps.base import (
    ALPN_PORT,
    CERT_FILE,
    ETC_DIR,
    KEY_FILE,
    OPT_DIR,
    TLS_DIR,
    VAR_DIR,
    VENV_DIR,
    HostState,
    Run,
    ensure_file,
    render_template,
)
from bootstrap.steps.nginx import Tls
from bootstrap.steps.step import Done, Footprint, Step
from bootstrap.steps.venv import Venv
from serving.certs import fingerprint_sha256, pinned_context

CLIENT_FILE = f"{OPT_DIR}/synthdet-cert.py"
CONFIG_FILE = f"{ETC_DIR}/acme.json"
# `--acme-ca`: the CA certificates of a private ACME server (its HTTPS, the roots it issues under).
CA_FILE = f"{ETC_DIR}/acme-ca.pem"
# The client's account key and status: root's alone (the service account reads /var/lib/synthdet).
STATE_DIR = f"{VAR_DIR}/acme"
# What `synthdet status` and the deploy read (shape: AcmeStatus).
STATUS_FILE = f"{STATE_DIR}/status.json"
CERT_SERVICE = "synthdet-cert.service"
CERT_TIMER = "synthdet-cert.timer"
UNIT_DIR = "/etc/systemd/system"
UNIT_FILES = (f"{UNIT_DIR}/{CERT_SERVICE}", f"{UNIT_DIR}/{CERT_TIMER}")
# The journal's identifier of the client's lines: journalctl -t synthdet-cert.
JOURNAL_ID = "synthdet-cert"
# Asked for when the CA offers it: Let's Encrypt issues IP certificates in this profile only.
PROFILE = "shortlived"
# Issuance takes seconds; a CA that cannot reach the host gives up within a minute or two.
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ServedCertificate:
    """The certificate the endpoint serves once the deploy is done, and how to trust it."""

    cert_pem: bytes
    # "acme" (from the CA), "self-signed" or "user" (--tls-cert).
    source: str
    # From a CA clients know: verify its chain and the address instead of pinning.
    public: bool
    # One line for people: who issued it until when, or why it is not public.
    note: str = ""
    # --acme-ca: trust these CA certificates instead of the system's roots.
    ca_file: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        """TLS for the deploy's own checks: the public chain for the address, else the pin."""
        if not self.public:
            return pinned_context(self.cert_pem)
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else certifi.where())


@dataclass(frozen=True)
class AcmeStatus:
    """STATUS_FILE, written by the client on the host after every run (bootstrap/acme_client.py)."""

    source: str  # "acme" or "self-signed" (no certificate from the CA yet, or fell back)
    name: str
    directory: str
    sha256: str
    issuer: str
    not_before: str | None
    not_after: str | None
    renew_after: str | None  # when the client renews it (source acme)
    checked_at: str | None
    last_error: str | None  # why the last attempt failed (None: it did not)
    last_error_at: str | None
    terms_of_service: str | None  # the CA's terms, agreed to at registration

    @classmethod
    def from_json(cls, text: str | bytes) -> AcmeStatus | None:
        try:
            data: dict[str, Any] = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or "source" not in data:
            return None
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)


def read_acme_status(conn: Runner) -> AcmeStatus | None:
    """The host's certificate status (None: ACME is off there, or the client never ran)."""
    text = files.read_file(conn, STATUS_FILE)
    return AcmeStatus.from_json(text) if text else None


def client_source() -> bytes:
    return resources.files("bootstrap").joinpath("acme_client.py").read_bytes()


def client_config(run: Run) -> str:
    """What the client reads (bootstrap.acme_client.Config)."""
    opts = run.options
    config = {
        "name": run.public_address,
        "directory": opts.acme_directory,
        "email": opts.acme_email or None,
        "ca_file": CA_FILE if opts.acme_ca else None,
        "profile": PROFILE,
        "cert_file": CERT_FILE,
        "key_file": KEY_FILE,
        "state_dir": STATE_DIR,
        "alpn_port": ALPN_PORT,
        "check_port": opts.public_port,
        "test_command": ["nginx", "-t", "-q"],
        "reload_command": ["systemctl", "reload", "nginx"],
    }
    return json.dumps(config, indent=1) + "\n"


def render_units() -> dict[str, str]:
    service = render_template(
        CERT_SERVICE,
        python=f"{VENV_DIR}/bin/python",
        client=CLIENT_FILE,
        config=CONFIG_FILE,
        identifier=JOURNAL_ID,
        tls_dir=TLS_DIR,
        state_dir=STATE_DIR,
    )
    return {UNIT_FILES[0]: service, UNIT_FILES[1]: render_template(CERT_TIMER)}


def state_dir_script() -> str:
    return "\n".join(
        [
            "set -e",
            f"if [ \"$(stat -c '%U:%G %a' {STATE_DIR} 2>/dev/null)\" != 'root:root 700' ]; then",
            f"  install -d -o root -g root -m 700 {STATE_DIR}",
            f"  chown root:root {STATE_DIR}; chmod 700 {STATE_DIR}",
            "  echo CHANGED",
            "fi",
        ]
    )


def install_client(run: Run) -> bool:
    """The client, its configuration, state folder, service and timer (enabled); changed?"""
    opts = run.options
    changed = ensure_file(run, CLIENT_FILE, client_source(), mode=0o644)
    changed |= ensure_file(run, CONFIG_FILE, client_config(run), mode=0o600)
    if opts.acme_ca is not None:
        changed |= ensure_file(run, CA_FILE, opts.acme_ca.read_bytes(), mode=0o644)
    elif files.sha256(run.conn, CA_FILE) is not None:
        run.conn.run(f"rm -f {CA_FILE}")
        changed = True
    changed |= "CHANGED" in run.conn.run(state_dir_script()).stdout
    units_changed = False
    for path, text in render_units().items():
        units_changed |= ensure_file(run, path, text, mode=0o644)
    if units_changed:
        run.conn.run("systemctl daemon-reload")
    # The timer renews while the host runs; the service also runs once at every boot, with
    # no random delay: a VM woken after a long stop (idle stop) may hold an expired
    # certificate, and phones should not meet it for the timer's first quarter hour.
    newly_enabled = False
    for unit in (CERT_TIMER, CERT_SERVICE):
        if run.conn.run(f"systemctl is-enabled {unit}", check=False).stdout.strip() != "enabled":
            run.conn.run(f"systemctl is-enabled --quiet {unit} || systemctl enable --quiet {unit}")
            newly_enabled = True
    run.conn.run(f"systemctl start {CERT_TIMER}")
    return changed or units_changed or newly_enabled


def remove_client(run: Run) -> bool:
    """ACME turned off: stop the timer and drop its files (the certificate is nginx's again)."""
    if files.sha256(run.conn, UNIT_FILES[1]) is None:
        return False
    run.conn.run(
        f"systemctl disable --now {CERT_TIMER} {CERT_SERVICE} 2>/dev/null || true; "
        f"rm -f {' '.join(UNIT_FILES)} {CLIENT_FILE} {CONFIG_FILE} {CA_FILE}; systemctl daemon-reload"
    )
    return True


def client_failure(run: Run) -> str:
    """Why the client left no status: the last lines it wrote (a crash, a broken venv)."""
    out = run.conn.run(f"journalctl -u {CERT_SERVICE} -n 3 -o cat --no-pager", check=False).stdout.strip()
    last = out.splitlines()[-1] if out else "no output"
    return f"the certificate client did not finish ({last}); see journalctl -u {CERT_SERVICE}"


def outcome(run: Run, status: AcmeStatus | None, cert_pem: bytes, ran_ok: bool) -> ServedCertificate:
    """What is served now, judged by the status the client wrote about that very certificate."""
    ca_file = run.options.acme_ca
    served = fingerprint_sha256(cert_pem)
    if status is not None and status.source == "acme" and status.sha256 == served:
        until = _short_time(status.not_after)
        note = f"{status.issuer or 'the CA'}, valid until {until}, renewed on the host ({CERT_TIMER})"
        return ServedCertificate(cert_pem, "acme", True, note, ca_file)
    if status is None or status.sha256 != served:
        why = client_failure(run) if not ran_ok else "the certificate client reported nothing"
    else:
        why = status.last_error or "no certificate from the CA yet"
    return ServedCertificate(cert_pem, "self-signed", False, why, ca_file)


def _short_time(stamp: str | None) -> str:
    try:
        return datetime.datetime.fromisoformat(stamp or "").strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return "?"


def apply(run: Run, state: HostState, venv: Venv, tls: Tls) -> Done[ServedCertificate]:
    opts = run.options
    if not opts.acme:
        changed = remove_client(run)
        source = state.tls_source or "self-signed"
        detail = "off" + (" (timer removed)" if changed else "") + f": the {source} certificate, pinned"
        return Done(changed, detail, ServedCertificate(tls.cert_pem, source, public=False))
    changed = install_client(run)
    run.progress.status(
        f"certificate for {run.public_address} from {opts.acme_directory} (TLS-ALPN-01 on :443; "
        "a valid one is reused)"
    )
    ran = run.conn.run(f"systemctl start {CERT_SERVICE}", check=False, timeout_s=RUN_TIMEOUT_S)
    cert_pem = files.read_file(run.conn, CERT_FILE) or tls.cert_pem
    served = outcome(run, read_acme_status(run.conn), cert_pem, ran.ok)
    changed |= cert_pem != tls.cert_pem
    if served.public:
        detail = f"{'new' if cert_pem != tls.cert_pem else 'kept'}: {served.note}"
    else:
        detail = (
            f"no certificate from the CA, serving a self-signed one: {served.note} "
            f"(trying again hourly: journalctl -t {JOURNAL_ID})"
        )
    return Done(changed, detail, served)


# Its client, configuration and state are in the layout's trees (/opt/synthdet, /etc/synthdet,
# /var/lib/synthdet); the units are the system's.
STEP = Step("certificate", apply, Footprint(units=(CERT_TIMER, CERT_SERVICE), files=UNIT_FILES))
