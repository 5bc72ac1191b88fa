"""What every cloud's scale-out shares: the result's shape, the boot files, health timings.

A fleet is N GPU instances behind the cloud's own HTTPS load balancer. Each
instance bootstraps itself at boot (the startup script runs the same deploy
steps as the SSH path, from a private bucket the stack fills) and serves
nginx + TorchServe on the instance port, reachable only from the balancer.
The balancer terminates TLS for the phone and forwards every path: it never
knows the URL secret (a cloud keeps resource configuration in plain and in its
audit logs); nginx on each instance checks it, as on a single host. Health
checks use a path without the secret (`LB_HEALTH_PATH`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from bootstrap.boot_local import boot_config
from bootstrap.bundle import Bundle, build_bundle
from bootstrap.startup_script import config_json, config_models, render_startup_script
from infra.config import ConfigError, Settings
from infra.images import Cloud, ImageChoice, select_image
from infra.pricing import Estimate, fleet_hourly, load_balancer_hourly, warn_missing

# In-flight requests get this long to finish when an instance leaves (the app times out
# after 2 s; TorchServe's own response timeout is far shorter than this in practice).
DRAIN_S = 30
HEALTH_INTERVAL_S = 10
HEALTH_TIMEOUT_S = 5
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 3
# A fresh GPU instance: boot, driver, venv, pip, TorchServe start and warm-up.
BOOT_GRACE_S = 1800


@dataclass(frozen=True)
class Fleet:
    """What every fleet returns, whatever the cloud (like `Host` for one VM)."""

    # https://ADDRESS[:PORT]: the balancer's URL without a path.
    base_url: pulumi.Output[str]
    # The balancer's address: an IP on GCP, a DNS name on AWS (an ALB's IPs change).
    address: pulumi.Output[str]
    # The managed instance group (GCP) / the Auto Scaling group's name (AWS).
    group_id: pulumi.Output[str]
    # The balancer's certificate fingerprint (None with a cloud-managed certificate).
    cert_sha256: pulumi.Output[str | None]
    bucket: pulumi.Output[str]
    hourly_cost_usd: float | None
    # DNS records the user has to create for a configured domain (else empty).
    dns_records: pulumi.Output[list[dict[str, str]]]


@dataclass(frozen=True)
class ReplicaFiles:
    """What instances fetch at boot: the bundle (wheel, archives) and boot.json (secret)."""

    bundle: Bundle
    config_json: pulumi.Output[str]


def replica_files(
    settings: Settings, url_secret: pulumi.Output[str], balancer_cidrs: pulumi.Input[Sequence[str]]
) -> ReplicaFiles:
    """Build the bundle here (at `pulumi up`) and the boot config the instances read.

    `balancer_cidrs`: where the balancer connects from; nginx trusts its
    X-Forwarded-For and answers its health checks (and nobody else's).
    """
    stack = settings.stack
    models = stack.model_specs()
    bundle = build_bundle(models, stack.serving_settings)
    config = pulumi.Output.all(url_secret, balancer_cidrs).apply(
        lambda values: config_json(
            boot_config(
                models=config_models(bundle),
                options=stack.deploy_options(url_secret=values[0], balancer_cidrs=tuple(values[1])),
            )
        )
    )
    return ReplicaFiles(bundle=bundle, config_json=pulumi.Output.secret(config))


@dataclass(frozen=True)
class ReplicaShape:
    """What every replica is, whatever the cloud: read once from the stack's settings."""

    machine_type: str
    image: ImageChoice
    # synthdet:image, when the user named an image of their own ("" = `image`).
    image_override: str
    disk_size_gb: int
    spot: bool
    public_port: int
    min_replicas: int
    max_replicas: int
    startup_script: pulumi.Output[str]
    # What must exist before instances boot (the bucket's objects).
    depends_on: list[pulumi.Resource]

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.min_replicas


def replica_shape(
    settings: Settings,
    cloud: Cloud,
    bundle: Bundle,
    *,
    source: pulumi.Output[str],
    config_object: pulumi.Output[str],
    objects: list[pulumi.Resource],
) -> ReplicaShape:
    """The replicas' shape: `source` is the bucket's URL, `config_object` boot.json's name."""
    stack = settings.stack
    low, high = stack.replica_range
    return ReplicaShape(
        machine_type=stack.resolved_machine_type(),
        image=select_image(cloud, stack.gpu),
        image_override=stack.image,
        disk_size_gb=stack.disk_size_gb,
        spot=stack.spot,
        public_port=stack.public_port,
        min_replicas=low,
        max_replicas=high,
        startup_script=startup_script(settings, bundle, source, config_object),
        depends_on=objects,
    )


def fleet_cost(per_replica: Estimate, replicas: int, cloud: Cloud, region: str) -> float | None:
    """Dollars per hour for `replicas` instances and the balancer (None when a price is missing)."""
    balancer = warn_missing(load_balancer_hourly(cloud, region))
    return fleet_hourly(per_replica, replicas, balancer).rounded()


def startup_script(
    settings: Settings, bundle: Bundle, source: pulumi.Output[str], config_object: pulumi.Output[str]
) -> pulumi.Output[str]:
    """The bash script every instance runs at boot (no secret in it)."""
    pip = settings.stack.pip_source()
    return pulumi.Output.all(source, config_object).apply(
        lambda v: render_startup_script(source=v[0], bundle=bundle, config_object=v[1], pip=pip)
    )


def check_fleet_settings(settings: Settings) -> None:
    """What a fleet's config leaves open: single-host keys (warned), a torch nobody pinned
    (refused: replicas must boot what was chosen, not what the index serves that day)."""
    stack = settings.stack
    # (idleStopMinutes is refused for fleets by the config: they scale to their minimum.)
    if stack.max_run_hours:
        pulumi.log.warn("synthdet:maxRunHours applies to the single host only, not to replicas")
    if stack.cloud == "ssh":  # refused for fleets by the config already
        return
    image = select_image(stack.cloud, stack.gpu)
    if (stack.image or not image.carries_torch) and not stack.torch_version:
        # Everything else a replica installs is locked with hashes; torch comes from the
        # PyTorch index for the GPU's CUDA build, so its version is what can be held.
        where = f"the image {stack.image}" if stack.image else image.source
        raise ConfigError(
            f"synthdet:torchVersion is needed for replicas here: {where} carries no torch the "
            "stack knows of, so each replica would install the newest torch the PyTorch index "
            "serves on the day it boots, and replicas of one fleet could differ. Set it, e.g. "
            "`pulumi config set synthdet:torchVersion 2.9.1` (a release with a build for the "
            "GPU's CUDA; docs/scale-out.md)."
        )
