"""The small typed boundary between the bootstrap's callers and the bootstrap.

`synthdet deploy`, the Pulumi dynamic provider and a replica's boot script all
build these and call `bootstrap.deploy`; nothing downstream needs to know
which cloud (if any) the host came from. Each type that crosses a process
boundary (Pulumi state, a replica's boot.json) has one `to_dict`/`from_dict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from serving.settings import ServingSettings

DEFAULT_KNOWN_HOSTS = Path.home() / ".config" / "synthdet" / "known_hosts"


@dataclass(frozen=True)
class SshTarget:
    """A host reachable over SSH (a cloud VM, a lab box, a test host)."""

    host: str
    user: str
    key_path: Path | None = None
    # Key material instead of a file (Pulumi passes the key as a secret).
    key_pem: str | None = None
    port: int = 22
    # Where host keys are recorded on first contact; a changed key is refused.
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    # Who the host's firewall admits on SSH, how that was found and how to change it, said
    # when SSH stays silent (the Pulumi program knows; empty: a generic line).
    firewall_hint: str = ""


@dataclass(frozen=True)
class PipSource:
    """Where the host's pip finds packages (PyPI, a mirror, or a local wheelhouse)."""

    index_url: str | None = None
    find_links: str | None = None
    trusted_hosts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_url": self.index_url,
            "find_links": self.find_links,
            "trusted_hosts": list(self.trusted_hosts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PipSource:
        data = data or {}
        return cls(
            index_url=data.get("index_url") or None,
            find_links=data.get("find_links") or None,
            trusted_hosts=tuple(data.get("trusted_hosts") or ()),
        )


_PATH_FIELDS = ("tls_cert", "tls_key", "work_dir", "acme_ca")

# Let's Encrypt's production ACME directory: the default CA with `acme` on. Registering an
# account there agrees to its subscriber agreement (LETS_ENCRYPT_TERMS lists the current one).
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_TERMS = "https://letsencrypt.org/repository/"
# TLS-ALPN-01, the only challenge the host answers, is validated on this port.
ACME_PORT = 443


@dataclass(frozen=True)
class DeployOptions:
    """Everything about a deploy except where (SshTarget) and what (ModelSpec)."""

    public_port: int = 443
    # Address in URLs and the certificate's SAN; None: the SSH host.
    public_address: str | None = None
    # None: reuse the secret stored on the host, or generate one on first deploy.
    url_secret: str | None = None
    # The user's own certificate and key (PEM); None: self-signed for public_address.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    pip: PipSource = field(default_factory=PipSource)
    serving: ServingSettings = field(default_factory=ServingSettings)
    # How long to wait for SSH on a host that is still booting (a fresh GPU VM: minutes).
    ssh_wait_timeout_s: float = 600.0
    # Base of the per-build torch indexes (<base>/cu126, .../cpu), or a mirror of it.
    torch_index_url: str | None = None
    # Pin for a torch the bootstrap installs (e.g. "2.8.0"); None: newest in the index.
    torch_version: str | None = None
    # Wait this long for the model to be READY and healthy through the public URL.
    health_timeout_s: float = 900.0
    smoke: bool = True
    # The smoke test is not the app: CPU inference takes seconds.
    smoke_timeout_s: float = 120.0
    # Where model archives are built locally; None: a temporary directory.
    work_dir: Path | None = None
    # Allow apt-get to install missing system packages (JRE, nginx, nftables, python3-venv).
    install_system_packages: bool = True
    # Interpreter (on the host) for the service venv; None: the image's when it is
    # >= 3.10, else one found or installed (bootstrap/python_select.py).
    python: str | None = None
    # Behind a load balancer: the addresses it connects from. nginx then takes the
    # client's address from X-Forwarded-For (rate limits per phone, not per balancer
    # node) and answers the balancer's secret-free health path to these only.
    balancer_cidrs: tuple[str, ...] = ()
    # A publicly trusted certificate for the public address from an ACME CA (TLS-ALPN-01
    # through port 443), renewed on the host; off: self-signed (bootstrap/steps/acme.py).
    acme: bool = False
    # Contact address given to the CA (expiry and policy mail); None: no contact.
    acme_email: str | None = None
    acme_directory: str = LETS_ENCRYPT_DIRECTORY
    # CA certificates to trust for a private ACME server: its HTTPS and the roots it issues
    # under (tests, private CAs); None: the system's roots.
    acme_ca: Path | None = None
    # Power the machine off after this many minutes without a prediction request or SSH
    # session (0: never; bootstrap/steps/idle_stop.py).
    idle_stop_minutes: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.public_port <= 65535:
            raise ValueError(f"public_port {self.public_port} is not a TCP port")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither (self-signed)")
        if not 0 <= self.idle_stop_minutes <= 1440:
            raise ValueError(f"idle_stop_minutes must be 0 (off) to 1440, not {self.idle_stop_minutes}")
        if self.acme:
            self._check_acme()

    def _check_acme(self) -> None:
        if self.public_port != ACME_PORT:
            raise ValueError(
                f"ACME validates the host on port {ACME_PORT} (TLS-ALPN-01), so it needs public port "
                f"{ACME_PORT}, not {self.public_port}: drop the other port, or ACME"
            )
        if self.tls_cert is not None:
            raise ValueError("give your own certificate (tls_cert/tls_key) or use ACME, not both")
        if self.balancer_cidrs:
            raise ValueError("behind a load balancer the balancer's certificate is served: no ACME")
        if not self.acme_directory.startswith("https://"):
            raise ValueError(f"the ACME directory must be an https:// URL, not {self.acme_directory!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; `from_dict` reads them back (Pulumi state, boot.json)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _PATH_FIELDS:
            data[name] = str(data[name]) if data[name] is not None else None
        data["pip"] = self.pip.to_dict()
        # Only what was set: the hardware's defaults are chosen where the model is served.
        data["serving"] = self.serving.user_set()
        data["balancer_cidrs"] = list(self.balancer_cidrs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown deploy options {unknown} (written by a newer synthdet?)")
        values = dict(data)
        for name in _PATH_FIELDS:
            if values.get(name) is not None:
                values[name] = Path(values[name])
        if "pip" in values:
            values["pip"] = PipSource.from_dict(values["pip"])
        if "serving" in values:
            values["serving"] = ServingSettings.model_validate(values["serving"] or {})
        if "balancer_cidrs" in values:
            values["balancer_cidrs"] = tuple(values["balancer_cidrs"] or ())
        return cls(**values)


@dataclass(frozen=True)
class DeployResult:
    """What a deploy produced: URLs (with the secret), the certificate, what changed."""

    endpoints: dict[str, str]
    endpoint: str
    cert_sha256: str
    changed: bool
    public_address: str
    # (step name, changed?) in the order they ran.
    steps: list[tuple[str, bool]] = field(default_factory=list)
    # gpu, driver, torch, device ("cuda"/"cpu"), os ...
    host: dict[str, str | None] = field(default_factory=dict)
    # The served certificate: source ("acme", "self-signed", "user"), public ("yes": clients
    # verify its chain; cert_sha256 then changes at every renewal) and note (issuer and
    # expiry, or why ACME did not give one).
    certificate: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "endpoints": self.endpoints,
            "cert_sha256": self.cert_sha256,
            "changed": self.changed,
            "public_ip": self.public_address,
            "steps": [{"name": n, "changed": c} for n, c in self.steps],
            "host": self.host,
            "certificate": self.certificate,
        }


class DeployReporter(Protocol):
    """How a deploy reports as it goes (rich in the CLI, logs in Pulumi, lines at boot)."""

    def status(self, message: str) -> None:
        """One line about what is happening now (waiting for SSH, installing ...)."""

    def step_done(self, name: str, changed: bool | None, detail: str = "") -> None:
        """A step finished: changed, unchanged, or None for a check (it changes nothing)."""

    def upload(self, label: str, sent: int, total: int) -> None:
        """Bytes of one upload sent so far."""


class SilentReporter:
    """Reports nothing (library callers that pass no DeployReporter)."""

    def status(self, message: str) -> None:
        pass

    def step_done(self, name: str, changed: bool | None, detail: str = "") -> None:
        pass

    def upload(self, label: str, sent: int, total: int) -> None:
        pass


class LineReporter:
    """Reports as plain lines with a prefix: Pulumi's engine log, a replica's boot log."""

    def __init__(self, write: Callable[[str], None], prefix: str) -> None:
        self.write = write
        self.prefix = prefix

    def status(self, message: str) -> None:
        self.write(f"{self.prefix}{message}")

    def step_done(self, name: str, changed: bool | None, detail: str = "") -> None:
        state = "checked" if changed is None else "changed" if changed else "unchanged"
        self.write(f"{self.prefix}{name}: {state}{f' ({detail})' if detail else ''}")

    def upload(self, label: str, sent: int, total: int) -> None:
        if sent == total:
            self.write(f"{self.prefix}uploaded {label} ({total / 1e6:.1f} MB)")
