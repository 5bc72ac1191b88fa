"""The small typed boundary between the deploy side's callers and the bootstrap.

The CLI (`synthdet deploy`) and the Pulumi dynamic provider both build these
and call `bootstrap.deploy.deploy` / `bootstrap.deploy.undeploy`; nothing
downstream needs to know which cloud (if any) the host came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bootstrap.settings import DEFAULT_MODEL_NAME, ServingSettings, check_model_name


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
    known_hosts: Path = field(default_factory=lambda: Path.home() / ".config" / "synthdet" / "known_hosts")


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve at /predictions/<name>/..."""

    name: str
    checkpoint: Path
    label_map: Path | None = None

    def __post_init__(self) -> None:
        check_model_name(self.name)

    @classmethod
    def parse(cls, value: str) -> ModelSpec:
        """`NAME=PATH` or a bare `PATH` (served as `synthdet`)."""
        name, sep, path = value.partition("=")
        if sep and name and "/" not in name:
            return cls(name=name, checkpoint=Path(path).expanduser())
        return cls(name=DEFAULT_MODEL_NAME, checkpoint=Path(value).expanduser())


@dataclass(frozen=True)
class PipSource:
    """Where the host's pip finds packages (PyPI, a mirror, or a local wheelhouse)."""

    index_url: str | None = None
    find_links: str | None = None
    trusted_hosts: tuple[str, ...] = ()


# ---------------------------------------------------------------- deploy
# Added by the SSH bootstrap (issue #3): what `bootstrap.deploy.deploy` takes
# and returns. The CLI and the Pulumi provider build/consume these.


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
    serving: ServingSettings = field(default_factory=lambda: ServingSettings.model_validate({}))
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
    # Where model archives are built locally; None: ~/.cache/synthdet/archives.
    work_dir: Path | None = None
    # Allow apt-get to install missing system packages (JRE, nginx, python3-venv).
    install_system_packages: bool = True
    # Interpreter (on the host) for the service venv; None: the image's when it is
    # >= 3.10, else one found or installed (bootstrap/python_select.py).
    python: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.public_port <= 65535:
            raise ValueError(f"public_port {self.public_port} is not a TCP port")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither (self-signed)")


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

    def to_json_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "endpoints": self.endpoints,
            "cert_sha256": self.cert_sha256,
            "changed": self.changed,
            "public_ip": self.public_address,
            "steps": [{"name": n, "changed": c} for n, c in self.steps],
            "host": self.host,
        }


class Progress(Protocol):
    """How a deploy reports as it goes (rich in the CLI, logs in Pulumi)."""

    def status(self, message: str) -> None:
        """One line about what is happening now (waiting for SSH, installing ...)."""

    def step_done(self, name: str, changed: bool, detail: str = "") -> None:
        """A step finished: changed or unchanged."""

    def upload(self, label: str, sent: int, total: int) -> None:
        """Bytes of one upload sent so far."""
