"""The stack's settings, read once into one typed model.

`Pulumi.yaml` (`config:`) is where every key is documented with its default;
the defaults below must match it (a unit test compares the two). Pulumi
applies the project defaults itself before the program runs; repeating them
here keeps the program correct under test mocks and gives each key a type.

Keys live in the project namespace: `synthdet:model`, `synthdet:spot`, ...
Cloud-provider keys stay in their own namespaces (`gcp:project`, `gcp:zone`,
`aws:region`) because the providers read them too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bootstrap.api import ACME_PORT, LETS_ENCRYPT_DIRECTORY, DeployOptions, PipSource
from bootstrap.steps.base import SERVICE_USER, TORCHSERVE_PORTS
from infra.images import NO_GPU, supported_gpus
from serving.models import ModelSpec
from serving.settings import ServingSettings

PROJECT = "synthdet"
# Relative paths in the config (model, label map, key) are relative to this
# directory, where Pulumi.yaml lives, whatever the program's working directory.
PROJECT_DIR = Path(__file__).resolve().parents[1]

Cloud = Literal["gcp", "aws", "ssh"]
SELF_CIDR = "self"  # in sshAllowedCidrs: this machine's public IPv4 address, /32
ANYWHERE = {"0.0.0.0/0", "::/0"}

# A lowercase DNS name with a dot (the load balancer's managed certificate names it).
DOMAIN_PATTERN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")

DEFAULT_GCP_ZONE = "us-central1-a"  # has T4s (as do us-central1-b/c/f)
DEFAULT_AWS_REGION = "us-east-1"  # has g3s and g4dn

# Machine sizes when `synthdet:machineType` is empty. Without a GPU: current Intel Xeons with
# AMX (bf16/int8 matrix units): c3 is Sapphire Rapids, c7i Sapphire Rapids; 8 vCPUs each.
DEFAULT_MACHINE_TYPES: dict[tuple[str, str], str] = {
    ("gcp", "t4"): "n1-standard-4",
    ("aws", "t4"): "g4dn.xlarge",
    ("aws", "m60"): "g3s.xlarge",
    ("gcp", NO_GPU): "c3-standard-8",
    ("aws", NO_GPU): "c7i.2xlarge",
}
# Machine types that come with GPUs of their own: with gpu none the plain image has no
# driver, so they would serve on CPU at GPU prices. GCP: the series (before the first '-');
# AWS: the family's letters (g4dn.xlarge -> g).
GPU_MACHINE_FAMILIES: dict[str, frozenset[str]] = {
    "gcp": frozenset({"a2", "a3", "a4", "g2", "g4"}),
    "aws": frozenset({"g", "p", "vt", "inf", "trn", "dl"}),
}


class ConfigError(ValueError):
    """A stack setting is missing or wrong; the message names the key."""


class StackConfig(BaseModel):
    """Every `synthdet:*` key; field aliases are the Pulumi key names."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    cloud: Cloud = "gcp"
    model: str = Field(min_length=1)
    extra_models: tuple[str, ...] = Field((), alias="extraModels")
    label_map: str = Field("", alias="labelMap")
    gpu: str = "t4"
    gpu_count: int = Field(1, alias="gpuCount", ge=1, le=8)
    machine_type: str = Field("", alias="machineType")
    image: str = ""
    disk_size_gb: int = Field(125, alias="diskSizeGb", ge=30, le=4096)
    spot: bool = False
    max_run_hours: int = Field(0, alias="maxRunHours", ge=0, le=720)
    idle_stop_minutes: int = Field(0, alias="idleStopMinutes", ge=0, le=1440)
    public_port: int = Field(443, alias="publicPort", ge=1, le=65535)
    endpoint_cidrs: tuple[str, ...] = Field(("0.0.0.0/0",), alias="endpointCidrs")
    ssh_allowed_cidrs: tuple[str, ...] = Field((SELF_CIDR,), alias="sshAllowedCidrs")
    ssh_user: str = Field("", alias="sshUser")
    ssh_private_key_path: str = Field("", alias="sshPrivateKeyPath")
    ssh_host: str = Field("", alias="sshHost")
    ssh_port: int = Field(22, alias="sshPort", ge=1, le=65535)
    serving: dict[str, Any] = Field(default_factory=dict)
    pip_index_url: str = Field("", alias="pipIndexUrl")
    pip_find_links: str = Field("", alias="pipFindLinks")
    pip_trusted_hosts: tuple[str, ...] = Field((), alias="pipTrustedHosts")
    torch_index_url: str = Field("", alias="torchIndexUrl")
    torch_version: str = Field("", alias="torchVersion")
    show_qr: bool = Field(False, alias="showQr")
    # Scale-out (docs/scale-out.md): more than one replica, or an autoscaling range,
    # puts instances behind the cloud's load balancer; 1 keeps the single host.
    replicas: int = Field(1, ge=1, le=100)
    max_replicas: int = Field(0, alias="maxReplicas", ge=0, le=100)
    requests_per_replica: int = Field(6, alias="requestsPerReplica", ge=1, le=1000)
    domain: str = ""
    replica_zones: tuple[str, ...] = Field((), alias="replicaZones")
    # AWS: the single host's zone (empty: EC2 picks); `synthdet up` moves it on a stockout.
    availability_zone: str = Field("", alias="availabilityZone")
    # A single host's certificate from an ACME CA for its static IP (bootstrap/steps/acme.py);
    # fleets serve the balancer's certificate instead.
    acme: bool = True
    acme_email: str = Field("", alias="acmeEmail")
    acme_directory: str = Field(LETS_ENCRYPT_DIRECTORY, alias="acmeDirectory")

    @field_validator("endpoint_cidrs", "ssh_allowed_cidrs")
    @classmethod
    def _cidrs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if value == SELF_CIDR:
                continue
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a CIDR (e.g. 203.0.113.7/32)") from exc
        return values

    @field_validator("public_port")
    @classmethod
    def _public_port(cls, port: int) -> int:
        # TorchServe's ports on the host (defined once, where the host layout is): nginx
        # on the public port cannot share one, and only nginx may face the network.
        if port in TORCHSERVE_PORTS or port == 22:
            reserved = ", ".join(str(p) for p in sorted(TORCHSERVE_PORTS))
            raise ValueError(
                f"port {port} is reserved (22 is SSH; {reserved} are TorchServe's own ports on the "
                "host, which stay private); pick another, e.g. 443 or 8443"
            )
        return port

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if value and (len(value) > 253 or not DOMAIN_PATTERN.match(value)):
            raise ValueError(f"{value!r} is not a DNS name (e.g. synthdet.example.com)")
        return value

    @field_validator("acme_directory")
    @classmethod
    def _acme_directory(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r} is not an https:// URL of an ACME directory")
        return value

    @field_validator("serving")
    @classmethod
    def _serving(cls, value: dict[str, Any]) -> dict[str, Any]:
        ServingSettings.model_validate(value)  # unknown keys and bad values fail here
        return value

    # ---------------------------------------------------------------- derived

    @property
    def serving_settings(self) -> ServingSettings:
        return ServingSettings.model_validate(self.serving)

    def model_specs(self) -> list[ModelSpec]:
        """`model` plus `extraModels`, each `NAME=PATH` or a bare `PATH` (served as synthdet)."""
        label_map = resolve_path(self.label_map) if self.label_map else None
        specs = []
        for value in (self.model, *self.extra_models):
            spec = ModelSpec.parse(value)
            checkpoint = resolve_path(str(spec.checkpoint))
            if not checkpoint.is_file():
                raise ConfigError(
                    f"synthdet:model/extraModels: checkpoint {checkpoint} "
                    f"of model {spec.name!r} does not exist"
                )
            specs.append(ModelSpec(spec.name, checkpoint, label_map=label_map))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"synthdet:model/extraModels: model names repeat: {names}")
        return specs

    def deploy_options(self, **overrides: Any) -> DeployOptions:
        """What the bootstrap needs from this stack (the URL secret and addresses come later)."""
        return DeployOptions(
            public_port=self.public_port,
            acme=self.uses_acme,
            acme_email=self.acme_email or None,
            acme_directory=self.acme_directory,
            pip=self.pip_source(),
            serving=self.serving_settings,
            torch_index_url=self.torch_index_url or None,
            torch_version=self.torch_version or None,
            idle_stop_minutes=self.idle_stop_minutes,
            **overrides,
        )

    def pip_source(self) -> PipSource:
        return PipSource(
            index_url=self.pip_index_url or None,
            find_links=self.pip_find_links or None,
            trusted_hosts=tuple(self.pip_trusted_hosts),
        )

    def resolved_machine_type(self) -> str:
        if self.machine_type:
            return self.machine_type
        try:
            return DEFAULT_MACHINE_TYPES[(self.cloud, self.gpu)]
        except KeyError:
            raise ConfigError(
                f"synthdet:gpu {self.gpu!r} has no default machine type on {self.cloud}; "
                "set synthdet:machineType"
            ) from None

    @property
    def has_gpu(self) -> bool:
        """False for a CPU stack (`synthdet:gpu: none`): plain OS image, CPU torch."""
        return self.gpu != NO_GPU

    def ssh_open_to_world(self) -> bool:
        return any(c in ANYWHERE for c in self.ssh_allowed_cidrs)

    @property
    def uses_acme(self) -> bool:
        """ACME for the host's certificate: asked for, and one host (not a fleet)."""
        return self.acme and not self.behind_load_balancer

    @property
    def behind_load_balancer(self) -> bool:
        """N replicas (or an autoscaling range) behind the cloud's load balancer."""
        return self.replicas > 1 or self.max_replicas > 1

    @property
    def replica_range(self) -> tuple[int, int]:
        """(min, max) instances; equal when the size is fixed."""
        return self.replicas, max(self.replicas, self.max_replicas)


@dataclass(frozen=True)
class ProviderSettings:
    """The cloud providers' own keys that the program needs to know too."""

    gcp_project: str | None
    gcp_zone: str
    aws_region: str

    @property
    def gcp_region(self) -> str:
        return self.gcp_zone.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Settings:
    stack: StackConfig
    providers: ProviderSettings


def resolve_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (PROJECT_DIR / path).resolve()


def _is_structured(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    return origin in (tuple, list, dict) or annotation in (tuple, list, dict)


def read_stack_config(config: pulumi.Config | None = None) -> StackConfig:
    """Every `synthdet:*` key present, validated; absent keys take the defaults."""
    config = config or pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    for name, field in StackConfig.model_fields.items():
        key = field.alias or name
        # Pulumi hands scalars over as strings; pydantic converts "443" and "true".
        value = config.get_object(key) if _is_structured(field.annotation) else config.get(key)
        if value is not None:
            raw[key] = value
    try:
        stack = StackConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    _check_cloud_keys(stack)
    return stack


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        hint = (
            " (set it with `pulumi config set synthdet:model ./model.pth`)"
            if (key == "model" and error["type"] == "missing")
            else ""
        )
        lines.append(f"synthdet:{key}: {error['msg']}{hint}")
    return "invalid stack configuration:\n  " + "\n  ".join(lines)


def _check_cloud_keys(stack: StackConfig) -> None:
    _check_gpu_keys(stack)
    if stack.behind_load_balancer and stack.cloud == "ssh":
        raise ConfigError("synthdet:replicas/maxReplicas need a cloud (gcp or aws), not the ssh stack")
    if stack.behind_load_balancer and stack.gpu == "m60":
        raise ConfigError(
            "synthdet:replicas/maxReplicas cannot use gpu m60: its image's Python is 3.8, too old for "
            "the replicas' unattended bootstrap, so every instance would fail its health check and be "
            "replaced forever while billing. Use gpu t4 for replicas, or one m60 host (replicas: 1)."
        )
    if stack.idle_stop_minutes and stack.behind_load_balancer:
        raise ConfigError(
            "synthdet:idleStopMinutes powers off a single host; a fleet does not power off: when "
            "quiet, its autoscaler scales it down to its minimum, synthdet:replicas instances "
            "(with maxReplicas above it), which is what hourly_cost_usd says it costs. Remove "
            "idleStopMinutes, lower synthdet:replicas, or `pulumi destroy` a fleet nobody uses."
        )
    if stack.cloud == "aws" and stack.spot and stack.idle_stop_minutes:
        raise ConfigError(
            "synthdet:idleStopMinutes cannot be used with synthdet:spot on AWS: the stack's spot "
            "instance comes from a one-time request, and AWS terminates (not stops) a one-time spot "
            "instance that powers itself off: its disk would be deleted and the next `pulumi up` "
            "would have to make a new one. Drop idleStopMinutes (spot is already cheap), or set "
            "spot: false to have an on-demand instance stopped when idle."
        )
    if stack.uses_acme and stack.public_port != ACME_PORT:
        raise ConfigError(
            f"synthdet:acme needs synthdet:publicPort {ACME_PORT}: the CA validates the host on port "
            f"{ACME_PORT} (TLS-ALPN-01). Set publicPort {ACME_PORT}, or acme false to serve a "
            f"self-signed certificate on {stack.public_port}"
        )
    if stack.ssh_user == SERVICE_USER:
        raise ConfigError(
            f"synthdet:sshUser {SERVICE_USER!r} is the name of the account the model runs as; "
            "log in as another user (the default is fine)"
        )
    if stack.max_replicas and stack.max_replicas < stack.replicas:
        raise ConfigError(
            f"synthdet:maxReplicas ({stack.max_replicas}) is below synthdet:replicas ({stack.replicas}); "
            "it is the top of the autoscaling range (0: a fixed size)"
        )
    if stack.cloud == "ssh":
        missing = [
            f"synthdet:{key}"
            for key, value in (("sshHost", stack.ssh_host), ("sshPrivateKeyPath", stack.ssh_private_key_path))
            if not value
        ]
        if missing:
            raise ConfigError(f"the ssh stack needs {', '.join(missing)}")


def machine_family(cloud: str, machine_type: str) -> str:
    """GCP: the series (c3-standard-8 -> c3); AWS: the family's letters (c7i.2xlarge -> c)."""
    if cloud == "aws":
        letters = re.match(r"[a-z]+", machine_type)
        return letters.group(0) if letters else ""
    return machine_type.split("-", 1)[0]


def _check_gpu_keys(stack: StackConfig) -> None:
    """synthdet:gpu must exist on the cloud, and a CPU stack must not ask for GPUs."""
    if stack.cloud == "ssh":  # the existing host has what it has; the bootstrap finds out
        return
    offered = supported_gpus(stack.cloud)
    if stack.gpu not in (*offered, NO_GPU):
        raise ConfigError(
            f"synthdet:gpu {stack.gpu!r} is not offered on {stack.cloud}: use "
            f"{' or '.join(offered)}, or {NO_GPU!r} (no GPU: a CPU machine, which needs no GPU quota)"
        )
    if stack.has_gpu:
        return
    if stack.gpu_count != 1:
        raise ConfigError(
            f"synthdet:gpuCount {stack.gpu_count} with synthdet:gpu {NO_GPU!r}: a CPU stack attaches no "
            f"GPU; remove gpuCount, or pick a GPU (synthdet:gpu {offered[-1]})"
        )
    machine = stack.resolved_machine_type()
    if machine_family(stack.cloud, machine) in GPU_MACHINE_FAMILIES[stack.cloud]:
        raise ConfigError(
            f"synthdet:machineType {machine} comes with GPUs, but synthdet:gpu is {NO_GPU!r}: the "
            "plain image has no NVIDIA driver, so it would serve on CPU at GPU prices. Use a CPU "
            f"machine type (default {DEFAULT_MACHINE_TYPES[(stack.cloud, NO_GPU)]}), or a GPU stack"
        )
    if stack.behind_load_balancer:
        raise ConfigError(
            f"synthdet:replicas/maxReplicas with synthdet:gpu {NO_GPU!r}: replicas without a GPU "
            "are not supported yet (their boot settings and startup script assume a GPU image). "
            "Serve from one CPU host (replicas: 1), or use GPU replicas"
        )


def read_provider_settings() -> ProviderSettings:
    gcp = pulumi.Config("gcp")
    aws = pulumi.Config("aws")
    return ProviderSettings(
        gcp_project=gcp.get("project"),
        gcp_zone=gcp.get("zone") or DEFAULT_GCP_ZONE,
        aws_region=aws.get("region") or DEFAULT_AWS_REGION,
    )


def read_settings() -> Settings:
    return Settings(stack=read_stack_config(), providers=read_provider_settings())
