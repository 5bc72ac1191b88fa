"""`synthdet wake` and `synthdet status`: a host stopped by idle stop, started again and checked.

A stack's host that powered itself off (bootstrap/steps/idle_stop.py) is a
stopped VM with its disk and static address, so waking it is: start the VM
through the cloud's API (`synthdet.cloud_vm`), wait until it runs, then wait
until the endpoint answers through its public URL exactly as a deploy checks
it: TLS pinned to the certificate the deploy installed (the stack's
`cert_sha256`; a certificate a CA vouches for where the host renewed its own),
the health path, then one app-style request. That request is a prediction, so
it also restarts the host's idle clock.

The status is the VM's state from the cloud, the host's idle clock (served by
nginx under the URL secret: `/SECRET/idle-stop`, which is not activity) and
the certificate it serves (as a phone's browser sees it: publicly trusted, or
self-signed, e.g. ACME's fallback) while it runs, and what it costs per hour
now: the stack's `hourly_cost_usd` running, `stopped_hourly_cost_usd` (disk
and address) stopped.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from serving.certs import fingerprint_sha256, pinned_context
from serving.contract import SmokeError, SmokeResult, Verify, smoke
from serving.endpoint import base_url, health_url, idle_status_url, redact
from serving.polling import Retrying, poll, retry
from synthdet.cloud_vm import VmError, VmState, power, wait_for
from synthdet.stack_outputs import StackOutputs

# A stopped VM is running again within a minute or two; a GPU image's boot, driver
# checks and TorchServe's model load take minutes more before the endpoint answers.
VM_START_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 10.0
# How often the endpoint and the VM's state are asked again while waiting.
ENDPOINT_EVERY_S = 3.0
VM_EVERY_S = 5.0
# A VM still stopped this long after the cloud accepted its start will not start.
STILL_STOPPED_S = 90.0
# What a running VM costs: every state but these.
STOPPED_STATES = ("stopped", "suspended")

Say = Callable[[str], None]


class WakeError(Exception):
    """Waking (or reading the status) failed; the message is one line saying what to do."""


class NotAnswering(Exception):
    """The endpoint does not answer like a serving host (yet)."""


@dataclass(frozen=True)
class Endpoint:
    """A deployed endpoint's prediction URL, and what is built from it."""

    url: str  # https://HOST[:PORT]/SECRET/predictions/NAME, as the QR code holds it
    host: str
    port: int
    secret: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parsed = httpx.URL(url)
        segments = parsed.path.split("/")
        if parsed.scheme != "https" or len(segments) < 4 or segments[2] != "predictions" or not segments[1]:
            raise WakeError(
                f"{redact(url)} is not a deployed endpoint (https://HOST/SECRET/predictions/NAME)"
            )
        return cls(url, parsed.host, parsed.port or 443, segments[1])

    @property
    def base(self) -> str:
        return base_url(self.host, self.port)

    @property
    def health(self) -> str:
        return health_url(self.base, self.secret)

    @property
    def idle_status(self) -> str:
        return idle_status_url(self.base, self.secret)


class CertificateNotReady(NotAnswering):
    """The host answers TLS, but with a certificate it is about to replace: an expired one, or
    the self-signed fallback of a host whose certificate client gets one from a CA (ACME). The
    client renews at boot and hourly, so this is waited out like a host still booting. The
    message says what is served; `final` is the line to say if it never changes."""

    def __init__(self, why: str, final: str) -> None:
        super().__init__(why)
        self.final = final


@dataclass(frozen=True)
class CertificateSeen:
    """The certificate the endpoint serves now, checked the way a phone's browser checks it."""

    public: bool  # a CA this machine trusts vouches for it for the address (a padlock)
    issuer: str
    not_after: str  # ISO 8601, UTC
    sha256: str
    # Past its end: a host stopped for longer than a short-lived certificate lasts.
    expired: bool = False
    # Its own issuer: the deploy's certificate, or the ACME client's fallback.
    self_signed: bool = False


def _served(endpoint: Endpoint) -> tuple[bytes, CertificateSeen]:
    """(the certificate's PEM, what it is); NotAnswering when nothing answers TLS on its port."""
    try:
        pem = ssl.get_server_certificate((endpoint.host, endpoint.port), timeout=REQUEST_TIMEOUT_S).encode()
    except (OSError, ssl.SSLError) as exc:
        raise NotAnswering(f"{type(exc).__name__}: {exc}") from None
    cert = x509.load_pem_x509_certificate(pem)
    try:
        with (
            socket.create_connection((endpoint.host, endpoint.port), timeout=REQUEST_TIMEOUT_S) as sock,
            ssl.create_default_context().wrap_socket(sock, server_hostname=endpoint.host),
        ):
            public = True
    except ssl.SSLError:
        public = False
    except OSError as exc:
        raise NotAnswering(f"{type(exc).__name__}: {exc}") from None
    return pem, CertificateSeen(
        public=public,
        issuer=cert.issuer.rfc4514_string() or "(no issuer name)",
        not_after=cert.not_valid_after_utc.isoformat(),
        sha256=fingerprint_sha256(pem),
        expired=cert.not_valid_after_utc <= datetime.now(timezone.utc),
        self_signed=cert.issuer == cert.subject,
    )


def certificate_seen(endpoint: Endpoint) -> CertificateSeen:
    """What the endpoint serves; NotAnswering when nothing answers TLS on its port."""
    return _served(endpoint)[1]


def tls_for(endpoint: Endpoint, cert_sha256: str | None, certificate_source: str | None = None) -> Verify:
    """How TLS to the endpoint is checked: a CA vouches for what it serves, or it is the very
    certificate the deploy installed (pinned). The URL secret goes to nothing less.

    NotAnswering when nothing answers on the port. CertificateNotReady (a NotAnswering: it is
    waited out) when a host whose certificate comes from a CA (`certificate_source` "acme")
    serves an expired certificate or its self-signed fallback: its client replaces them at
    boot. WakeError when something answers with a certificate that is none of these (not
    the host this stack deployed), or an expired one nothing on the host renews."""
    pem, seen = _served(endpoint)
    if seen.public:
        return ssl.create_default_context()
    if seen.expired:
        raise _expired(endpoint, seen, certificate_source)
    if cert_sha256 and seen.sha256 == cert_sha256:
        return pinned_context(pem)
    if certificate_source == "acme" and seen.self_signed:
        raise CertificateNotReady(
            "it serves its self-signed fallback certificate, not one from the CA",
            f"{endpoint.base} serves its self-signed fallback certificate (SHA-256 {seen.sha256}), "
            f"not one from the CA, and the URL secret is not sent there: {WHY_NO_RENEWAL}",
        )
    raise WakeError(
        f"{endpoint.base} serves a certificate (SHA-256 {seen.sha256}) that is not the "
        f"one the stack deployed ({cert_sha256 or 'none recorded'}) and no CA vouches for it: is the "
        "address somebody else's now? `pulumi up` redeploys and records the new one"
    )


# Where to look when an ACME host keeps serving a certificate that is not the CA's current one.
WHY_NO_RENEWAL = (
    "its certificate client renews at every boot and hourly; `sudo journalctl -t synthdet-cert` "
    "on the host says why it could not"
)


def _expired(endpoint: Endpoint, seen: CertificateSeen, source: str | None) -> NotAnswering | WakeError:
    since = f"{endpoint.base} serves a certificate that expired at {seen.not_after} (SHA-256 {seen.sha256})"
    if source == "acme":
        return CertificateNotReady(
            f"it serves a certificate that expired at {seen.not_after}", f"{since}: {WHY_NO_RENEWAL}"
        )
    return WakeError(f"{since}; nothing on the host renews it: `pulumi up` redeploys it with a new one")


def wait_answering(
    endpoint: Endpoint,
    cert_sha256: str | None,
    *,
    timeout_s: float,
    say: Say,
    certificate_source: str | None = None,
) -> tuple[SmokeResult, Verify]:
    """Health through the public URL, then one request like the app's, retried until both
    succeed or time runs out (TorchServe answers /ping before its workers have loaded, an
    ACME host renews an expired certificate moments after it boots)."""

    def attempt() -> tuple[SmokeResult, Verify]:
        verify = tls_for(endpoint, cert_sha256, certificate_source)
        try:
            with httpx.Client(verify=verify, timeout=REQUEST_TIMEOUT_S) as client:
                status = client.get(endpoint.health).status_code
        except httpx.HTTPError as exc:
            raise NotAnswering(f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            raise NotAnswering(f"the health check answered HTTP {status}")
        try:
            return smoke(endpoint.url, timeout_s=60.0, verify=verify), verify
        except SmokeError as exc:
            raise NotAnswering(str(exc)) from None

    said = ""

    def report(attempt: Retrying) -> None:
        nonlocal said
        why = str(attempt.error).splitlines()[0][:200]
        if why != said:
            say(f"waiting for {redact(endpoint.health)} ({why})")
            said = why

    try:
        return retry(
            attempt, timeout_s=timeout_s, every_s=ENDPOINT_EVERY_S, when=NotAnswering, on_retry=report
        )
    except CertificateNotReady as exc:
        raise WakeError(f"{exc.final}; then `synthdet wake` again") from None
    except NotAnswering as exc:
        raise WakeError(
            f"{redact(endpoint.url)} did not answer within {timeout_s:.0f} s ({exc}); the host may still be "
            "booting: run `synthdet wake` again, or look at its serial console / journal"
        ) from None


@dataclass(frozen=True)
class IdleStatus:
    """The host's idle clock (bootstrap/templates/synthdet-idle-stop.sh writes it every minute)."""

    idle_stop_minutes: int
    idle_minutes: float
    stops_at: str | None
    last_request_at: str | None
    last_login_at: str | None
    window_start_at: str | None
    sessions: int  # logins open at the check (SSH, console, Session Manager)
    last_idle_stop_at: str | None
    checked_at: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdleStatus:
        """ValueError/TypeError when it is not the clock's JSON."""

        def text(name: str) -> str | None:
            value = data.get(name)
            return None if value is None else str(value)

        return cls(
            idle_stop_minutes=int(data["idle_stop_minutes"]),
            idle_minutes=float(data["idle_minutes"]),
            stops_at=text("stops_at"),
            last_request_at=text("last_request_at"),
            last_login_at=text("last_login_at"),
            window_start_at=text("window_start_at"),
            sessions=int(data.get("sessions") or 0),
            last_idle_stop_at=text("last_idle_stop_at"),
            checked_at=text("checked_at"),
        )


def read_idle_status(endpoint: Endpoint, verify: Verify) -> IdleStatus | None:
    """The host's idle clock; None when the host has no idle stop (its nginx answers 404)."""
    try:
        with httpx.Client(verify=verify, timeout=REQUEST_TIMEOUT_S) as client:
            response = client.get(endpoint.idle_status)
    except httpx.HTTPError as exc:
        raise NotAnswering(f"{type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise NotAnswering(f"the idle status answered HTTP {response.status_code}")
    try:
        return IdleStatus.from_json(response.json())
    except (ValueError, TypeError, KeyError) as exc:
        raise NotAnswering(f"the idle status is not the JSON expected: {exc}") from None


# ------------------------------------------------------------------------ wake


@dataclass(frozen=True)
class WakeResult:
    endpoint: str
    before: str  # the VM's state when asked ("answering" for a machine without a cloud VM)
    started: bool  # whether this asked the cloud to start it
    seconds: float
    smoke: SmokeResult
    idle_stop_minutes: int | None


def wake(outputs: StackOutputs, work_dir: Path, *, timeout_s: float, say: Say) -> WakeResult:
    """Start the stack's stopped VM and wait until its endpoint answers like the app needs."""
    if outputs.is_fleet:
        raise WakeError(
            f"{outputs.stack} is a fleet: it never powers off (when quiet it scales to its minimum, "
            "synthdet:replicas), so there is nothing to wake"
        )
    endpoint = Endpoint.parse(outputs.endpoint)
    began = time.monotonic()
    deadline = began + timeout_s
    vm = outputs.cloud_vm
    before, started = "no cloud VM", False
    if vm is None:
        say(
            f"{outputs.stack} is a machine of your own: no cloud API of ours can start it. Power it on; "
            "this waits until its endpoint answers"
        )
    else:
        state, started = _start(vm, work_dir, deadline, say)
        before = state.cloud_state
    result, _ = wait_answering(
        endpoint,
        outputs.cert_sha256,
        timeout_s=max(deadline - time.monotonic(), 1.0),
        say=say,
        certificate_source=outputs.certificate_source,
    )
    return WakeResult(
        endpoint=outputs.endpoint,
        before=before,
        started=started,
        seconds=time.monotonic() - began,
        smoke=result,
        idle_stop_minutes=outputs.idle_stop_minutes,
    )


def _start(vm: dict[str, Any], work_dir: Path, deadline: float, say: Say) -> tuple[VmState, bool]:
    """Start the VM if it is stopped (waiting out a stop in progress); (its state first, started?)."""
    try:
        first = state = power("state", vm, work_dir)
        say(f"{state.where}: {state.cloud_state}")
        if state.state == "gone":
            raise WakeError(
                f"{state.where} no longer exists ({state.cloud_state}): `pulumi up` creates a new VM "
                "(and a new deployment on it)"
            )
        if state.state == "suspended":
            raise WakeError(
                f"{state.where} is suspended, not stopped: resume it with the cloud's console or CLI"
            )
        if state.state == "stopping":
            state = wait_for(
                vm, ("stopped",), work_dir, timeout_s=_left(deadline), every_s=VM_EVERY_S, on_status=say
            )
        started = state.state == "stopped"
        if started:
            state = power("start", vm, work_dir)
            say(f"{state.where}: asked to start ({state.cloud_state})")
        if state.state != "running":
            _until_running(vm, work_dir, min(_left(deadline), VM_START_TIMEOUT_S), say)
    except VmError as exc:
        raise WakeError(str(exc)) from None
    return first, started


def _until_running(vm: dict[str, Any], work_dir: Path, timeout_s: float, say: Say) -> VmState:
    """Poll until the VM runs. A start the cloud accepted but could not carry out (no spot
    capacity, a quota) leaves it stopped: say so instead of waiting out the timeout."""
    asked, said = time.monotonic(), ""

    def check() -> VmState:
        nonlocal said
        found = power("state", vm, work_dir)
        if found.cloud_state != said:
            say(f"{found.where}: {found.cloud_state}")
            said = found.cloud_state
        waited = time.monotonic() - asked
        if found.state in ("stopped", "gone") and waited >= STILL_STOPPED_S:
            raise WakeError(
                f"{found.where} is still {found.cloud_state} {waited:.0f} s after the cloud accepted the "
                "start: it could not start it (no spot capacity in the zone? a quota?); the cloud "
                "console's operations say why. Try again later"
            )
        return found

    running, last = poll(
        check, lambda found: found.state == "running", timeout_s=timeout_s, every_s=VM_EVERY_S
    )
    if not running:
        raise WakeError(f"{last.where} is still {last.cloud_state} after {timeout_s:.0f} s")
    return last


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 1.0)


# ------------------------------------------------------------------------ status


@dataclass(frozen=True)
class StackStatus:
    stack: str
    # running, starting, stopping, stopped, suspended, gone (a cloud VM); answering, not
    # answering (a machine of your own); fleet.
    state: str
    cloud_state: str | None
    where: str | None
    idle_stop_minutes: int | None  # the stack's setting (None: deployed before idle stop)
    idle: IdleStatus | None  # the host's clock, while it runs and has idle stop
    idle_unread: str | None  # why the clock could not be read from a running host
    certificate: CertificateSeen | None  # what a running host serves
    # How the stack asked for its certificate: "acme", "self-signed", "user" (None: not said).
    certificate_source: str | None
    hourly_cost_usd_now: float | None
    hourly_cost_usd_running: float | None
    hourly_cost_usd_stopped: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def stack_status(outputs: StackOutputs, work_dir: Path) -> StackStatus:
    running_cost, stopped_cost = outputs.hourly_cost_usd, outputs.stopped_hourly_cost_usd
    if outputs.is_fleet:
        return StackStatus(
            outputs.stack, "fleet", None, None, None, None, None, None, None, running_cost, running_cost, None
        )
    endpoint = Endpoint.parse(outputs.endpoint)
    vm = outputs.cloud_vm
    if vm is None:
        state: VmState | None = None
        idle, unread = _idle_of(endpoint, outputs.cert_sha256, outputs.certificate_source)
        kind = "not answering" if unread and unread.startswith("not answering") else "answering"
        now = None
    else:
        try:
            state = power("state", vm, work_dir)
        except VmError as exc:
            raise WakeError(str(exc)) from None
        kind = state.state
        idle, unread = (
            (None, None)
            if kind in (*STOPPED_STATES, "gone")
            else _idle_of(endpoint, outputs.cert_sha256, outputs.certificate_source)
        )
        now = _cost_now(kind, running_cost, stopped_cost)
    serving = kind in ("running", "answering")
    return StackStatus(
        stack=outputs.stack,
        state=kind,
        cloud_state=state.cloud_state if state else None,
        where=state.where if state else None,
        idle_stop_minutes=outputs.idle_stop_minutes,
        idle=idle,
        idle_unread=unread,
        certificate=_certificate_of(endpoint) if serving else None,
        certificate_source=outputs.certificate_source,
        hourly_cost_usd_now=now,
        hourly_cost_usd_running=running_cost,
        hourly_cost_usd_stopped=stopped_cost,
    )


def _cost_now(state: str, running: float | None, stopped: float | None) -> float | None:
    if state == "gone":
        return 0.0
    return stopped if state in STOPPED_STATES else running


def _idle_of(
    endpoint: Endpoint, cert_sha256: str | None, certificate_source: str | None
) -> tuple[IdleStatus | None, str | None]:
    """(the host's idle clock or None, why it could not be read)."""
    try:
        verify = tls_for(endpoint, cert_sha256, certificate_source)
        return read_idle_status(endpoint, verify), None
    except CertificateNotReady as exc:  # it answers, with a certificate the secret is not sent to
        return None, f"{exc}: the URL secret is not sent there"
    except NotAnswering as exc:
        return None, f"not answering: {exc}"
    except WakeError as exc:
        return None, str(exc)


def _certificate_of(endpoint: Endpoint) -> CertificateSeen | None:
    try:
        return certificate_seen(endpoint)
    except NotAnswering:
        return None


def url_status(url: str) -> tuple[IdleStatus | None, CertificateSeen | None]:
    """The idle clock and the served certificate of any deployed endpoint (`synthdet status
    --url URL`): any certificate accepted, as the app does."""
    endpoint = Endpoint.parse(url)
    try:
        return read_idle_status(endpoint, False), certificate_seen(endpoint)
    except NotAnswering as exc:
        raise WakeError(f"{redact(url)}: {exc}") from None
