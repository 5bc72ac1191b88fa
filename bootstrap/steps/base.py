"""What every step shares: the host layout, the run context and small operations.

A step reads facts, compares them with what is wanted and acts only on a
difference, returning changed/unchanged (pyinfra's operation model). Steps
reach the host only through `bootstrap.ssh.Connection`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bootstrap.api import DeployOptions, ModelSpec, Progress

if TYPE_CHECKING:
    from bootstrap.facts import HostFacts
    from bootstrap.ssh import Connection
    from bootstrap.torch_select import TorchChoice


# ------------------------------------------------------------ host layout
SERVICE_USER = "synthdet"
OPT_DIR = "/opt/synthdet"
# A symlink to venv-<hash of its inputs>, switched atomically (see steps/venv.py).
VENV_DIR = f"{OPT_DIR}/venv"
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
# images run (Jupyter on 8080/8888 on some deep-learning images).
INFERENCE_PORT = 18080
MANAGEMENT_PORT = 18081
METRICS_PORT = 18082


@dataclass
class HostState:
    """Persisted in STATE_FILE (JSON) so reruns and undeploy know what deploy did."""

    apt_installed: list[str] = field(default_factory=list)
    removed_default_site: bool = False
    created_user: bool = False
    # name -> sha256 of the .mar TorchServe has loaded (written after a (re)load).
    loaded_models: dict[str, str] = field(default_factory=dict)
    tls_source: str = ""  # "self-signed" or "user"

    @classmethod
    def from_json(cls, text: str | bytes | None) -> HostState:
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class StepResult:
    name: str
    changed: bool
    detail: str = ""


class DeployError(RuntimeError):
    """A step could not reach the wanted state; the message says what to do."""


class _NullProgress:
    def status(self, message: str) -> None:
        pass

    def step_done(self, name: str, changed: bool, detail: str = "") -> None:
        pass

    def upload(self, label: str, sent: int, total: int) -> None:
        pass


NULL_PROGRESS: Progress = _NullProgress()


@dataclass
class Context:
    """One deploy run: the connection, what the host is, what is wanted, what happened."""

    conn: Connection
    facts: HostFacts
    models: tuple[ModelSpec, ...]
    options: DeployOptions
    public_address: str
    state: HostState
    progress: Progress = NULL_PROGRESS
    # Filled in as steps run.
    torch: TorchChoice | None = None
    python: str = ""
    archives: dict[str, Path] = field(default_factory=dict)
    archive_sha256: dict[str, str] = field(default_factory=dict)
    secret: str = ""
    cert_pem: bytes = b""
    service_restarted: bool = False
    # The service venv was switched: TorchServe must restart to use it.
    venv_changed: bool = False

    @property
    def workers_per_model(self) -> int:
        return self.options.serving.workers or max(1, len(self.facts.gpus))


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
def sha256_text(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def ensure_file(
    ctx: Context,
    path: str,
    content: str | bytes,
    *,
    mode: int = 0o644,
    owner: str = "root",
    group: str | None = None,
) -> bool:
    """Make `path` hold exactly `content`; True when it had to be written.

    Ownership and mode are corrected too (cheaply, without a rewrite).
    """
    data = content.encode() if isinstance(content, str) else content
    want = sha256_text(data)
    grp = group or owner
    q = shlex.quote(path)
    probe = ctx.conn.run(f"if [ -f {q} ]; then sha256sum {q}; stat -c '%U:%G %a' {q}; fi").stdout.splitlines()
    from bootstrap.facts import parse_sha256sum

    have = parse_sha256sum(probe[0]) if probe else None
    if have != want:
        ctx.conn.upload_atomic(data, path, mode=mode, owner=owner, group=grp)
        return True
    if len(probe) > 1 and probe[1].strip() != f"{owner}:{grp} {mode:o}":
        ctx.conn.run(f"chown {owner}:{grp} {q} && chmod {mode:o} {q}")
        return True
    return False


def systemctl_is_active(ctx: Context, unit: str) -> str:
    from bootstrap.facts import parse_is_active

    return parse_is_active(ctx.conn.run(f"systemctl is-active {unit}", check=False).stdout)


def write_state(ctx: Context) -> None:
    ensure_file(ctx, STATE_FILE, ctx.state.to_json(), mode=0o600)
