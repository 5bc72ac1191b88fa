"""What every step shares: the host layout, the run's inputs, the host's record, small operations.

A step reads facts, compares them with what is wanted and acts only on a
difference, returning changed/unchanged (pyinfra's operation model). Steps
reach the host only through `run.conn`, a `bootstrap.runner.Runner`, and
raise `DeployError` with what to do when they cannot reach the wanted state.
How a step declares what it needs and yields: bootstrap/steps/__init__.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bootstrap import files
from bootstrap.api import DeployOptions, DeployReporter, SilentReporter
from bootstrap.facts import HostFacts, parse_is_active
from bootstrap.runner import Runner
from serving.models import ModelSpec
from serving.settings import ServingSettings

# ------------------------------------------------------------ host layout
# The system account TorchServe runs as. Never a login: the clouds' login users
# (GCP: the stack's `synthdet`, AWS: `ubuntu`) have a home, a shell and admin
# groups, so the service account has a name of its own.
SERVICE_USER = "synthdet-svc"
OPT_DIR = "/opt/synthdet"
# A symlink to venv-<hash of its inputs>, switched atomically (see steps/venv.py).
VENV_DIR = f"{OPT_DIR}/venv"
# The web viewer page nginx answers a browser's GET with (steps/nginx.py).
VIEWER_DIR = f"{OPT_DIR}/viewer"
# The service's home and working directory: readable, not writable, by it.
VAR_DIR = "/var/lib/synthdet"
MODEL_STORE = f"{VAR_DIR}/model-store"
TS_TMP_DIR = f"{VAR_DIR}/tmp"
LOG_DIR = "/var/log/synthdet"
ETC_DIR = "/etc/synthdet"
CONFIG_FILE = f"{ETC_DIR}/config.properties"
SECRET_FILE = f"{ETC_DIR}/url_secret"
TLS_DIR = f"{ETC_DIR}/tls"
CERT_FILE = f"{TLS_DIR}/cert.pem"
KEY_FILE = f"{TLS_DIR}/key.pem"
# What deploy installed and what TorchServe last loaded: read by reruns and undeploy.
STATE_FILE = f"{ETC_DIR}/deploy-state.json"
UNIT_NAME = "synthdet-torchserve.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT_NAME}"
NGINX_SITE = "/etc/nginx/sites-available/synthdet"
NGINX_SITE_LINK = "/etc/nginx/sites-enabled/synthdet"
NGINX_DEFAULT_LINK = "/etc/nginx/sites-enabled/default"
# TorchServe listens on loopback only, on ports unlikely to clash with what
# images run (Jupyter on 8080/8888 on some deep-learning images); the firewall
# step lets only root and nginx's workers connect to any of them.
INFERENCE_PORT = 18080
MANAGEMENT_PORT = 18081
METRICS_PORT = 18082
GRPC_PORTS = (7070, 7071)  # TorchServe always starts gRPC; it cannot be switched off
TORCHSERVE_PORTS = (INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT, *GRPC_PORTS)
# With ACME (steps/acme.py): nginx's stream splitter on the public port sends ALPN
# "acme-tls/1" to the certificate client's responder on ALPN_PORT and everything else to
# the site on SITE_PORT (both on 127.0.0.1). Below 1024, so only root listens there: no
# local user can answer the CA in the host's name (a publicly trusted certificate for its
# address) or stand in for the site. The firewall lets only root and nginx connect to them
# (the site trusts the PROXY header the splitter sends: anybody else could forge addresses).
SITE_PORT = 843
ALPN_PORT = 844


@dataclass
class HostState:
    """Persisted in STATE_FILE (JSON) so reruns and undeploy know what deploy did."""

    apt_installed: list[str] = field(default_factory=list)
    removed_default_site: bool = False
    # System accounts deploy created (undeploy removes these and no other).
    created_users: list[str] = field(default_factory=list)
    # name -> sha256 of the .mar TorchServe has loaded (written after a (re)load).
    loaded_models: dict[str, str] = field(default_factory=dict)
    tls_source: str = ""  # "self-signed" or "user"

    @classmethod
    def from_json(cls, text: str | bytes | None) -> HostState:
        if not text:
            return cls()
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError:
            return cls()
        if data.pop("created_user", False):  # written by versions before 0.2: one account
            data.setdefault("created_users", ["synthdet"])
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


class DeployError(RuntimeError):
    """A step could not reach the wanted state; the message says what to do."""


SILENT_REPORTER: DeployReporter = SilentReporter()


@dataclass(frozen=True)
class Archive:
    """One model's archive, built on this machine."""

    path: Path
    sha256: str


def settings_for(facts: HostFacts, serving: ServingSettings) -> ServingSettings:
    """`serving` with what the user left unset chosen for this host's GPUs and cores."""
    return serving.for_hardware(gpus=len(facts.gpus), cpu_cores=facts.cpus)


@dataclass(frozen=True)
class Run:
    """What one deploy run is given: the same, read-only, for every step."""

    conn: Runner
    facts: HostFacts
    models: tuple[ModelSpec, ...]
    # Its serving settings are filled in for this host's hardware (`settings_for`).
    options: DeployOptions
    public_address: str
    # Model name -> its archive, built for `options.serving`.
    archives: Mapping[str, Archive] = field(default_factory=dict)
    progress: DeployReporter = SILENT_REPORTER

    def __post_init__(self) -> None:
        if self.options.serving.workers is None:
            raise ValueError("Run.options.serving must be filled in for the host (settings_for)")

    @property
    def workers_per_model(self) -> int:
        workers = self.options.serving.workers
        assert workers is not None  # checked in __post_init__
        return workers


# ------------------------------------------------------------- templates
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def render_template(template: str, /, **values: object) -> str:
    """Fill `{{ key }}` placeholders (nginx and systemd use `$` and `{}` themselves)."""
    text = resources.files("bootstrap").joinpath("templates", template).read_text(encoding="utf-8")

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template {template} needs a value for {key!r}")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, text)


# ------------------------------------------------------------ operations
def ensure_file(
    run: Run,
    path: str,
    content: str | bytes,
    *,
    mode: int = 0o644,
    owner: str = "root",
    group: str | None = None,
) -> bool:
    """`bootstrap.files.ensure_file` on this run's host; True when it changed anything."""
    return files.ensure_file(run.conn, path, content, mode=mode, owner=owner, group=group)


def systemctl_is_active(run: Run, unit: str) -> str:
    return parse_is_active(run.conn.run(f"systemctl is-active {unit}", check=False).stdout)


def write_state(run: Run, state: HostState) -> None:
    ensure_file(run, STATE_FILE, state.to_json(), mode=0o600)
