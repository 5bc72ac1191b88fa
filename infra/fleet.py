"""What the scale-out components share: their arguments, their result, the LB's rules.

A fleet is N GPU instances behind the cloud's own HTTPS load balancer. Each
instance bootstraps itself at boot (the startup script runs the same deploy
steps as the SSH path) and serves nginx + TorchServe on the instance port,
reachable only from the load balancer. The balancer terminates TLS for the
phone and routes only the secret's paths; everything else is its own 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_tls as tls

from bootstrap.api import PipSource
from bootstrap.bundle import Bundle
from bootstrap.startup_script import render_startup_script
from infra.images import ImageChoice

# In-flight requests get this long to finish when an instance leaves (the app times out
# after 2 s; TorchServe's own response timeout is far shorter than this in practice).
DRAIN_S = 30
# Health checks: the health path under the secret (nginx answers nothing else).
HEALTH_INTERVAL_S = 10
HEALTH_TIMEOUT_S = 5
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 3
# A fresh GPU instance: boot, driver, venv, pip, TorchServe start and warm-up.
BOOT_GRACE_S = 1800
# Self-signed certificate for the balancer when no domain is configured.
CERT_VALIDITY_HOURS = 5 * 365 * 24
CERT_RENEW_HOURS = 30 * 24


@dataclass
class FleetArgs:
    """Everything a cloud's fleet component needs; cloud-specific fields are in its own args."""

    bundle: Bundle
    config_json: pulumi.Output[str]  # secret: boot.json
    url_secret: pulumi.Output[str]  # secret
    machine_type: str
    gpu: str
    image: ImageChoice
    min_replicas: int
    max_replicas: int
    requests_per_replica: int
    public_port: int
    endpoint_cidrs: list[str]
    disk_size_gb: int = 125
    spot: bool = False
    image_override: str = ""
    domain: str = ""
    # Where the boot venv gets its packages (None: PyPI).
    pip: PipSource | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.min_replicas


@dataclass(frozen=True)
class Fleet:
    """What every fleet component returns, whatever the cloud (like `Host` for one VM)."""

    # https://ADDRESS[:PORT]: the balancer's URL without a path.
    base_url: pulumi.Output[str]
    # The balancer's address: an IP on GCP, a DNS name on AWS.
    public_ip: pulumi.Output[str]
    # The instance group / Auto Scaling group.
    group_id: pulumi.Output[str]
    # The balancer's certificate fingerprint (None with a cloud-managed certificate).
    cert_sha256: pulumi.Output[str | None]
    bucket: pulumi.Output[str]
    hourly_cost_usd: float | None
    # DNS records the user has to create for a configured domain (else empty).
    dns_records: pulumi.Output[list[dict[str, str]]]


def health_path(secret: str) -> str:
    return f"/{secret}/ping"


def predictions_prefix(secret: str) -> str:
    return f"/{secret}/predictions/"


def base_url(address: str, port: int) -> str:
    return f"https://{address}" if port == 443 else f"https://{address}:{port}"


def startup_script(
    args: FleetArgs, source: pulumi.Output[str], config_object: pulumi.Output[str]
) -> pulumi.Output[str]:
    """The bash script every instance runs at boot (no secret in it)."""
    return pulumi.Output.all(source, config_object).apply(
        lambda v: render_startup_script(source=v[0], bundle=args.bundle, config_object=v[1], pip=args.pip)
    )


@dataclass(frozen=True)
class SelfSigned:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]  # secret


def self_signed(
    name: str,
    parent: pulumi.Resource,
    *,
    ip_addresses: pulumi.Input[list[str]] | None = None,
    dns_names: pulumi.Input[list[str]] | None = None,
    common_name: pulumi.Input[str] = "synthdet",
) -> SelfSigned:
    """A certificate for the balancer's address (the app accepts any certificate)."""
    child = pulumi.ResourceOptions(parent=parent)
    # RSA 2048: what both clouds' load balancers take for uploaded certificates.
    key = tls.PrivateKey(f"{name}-tls-key", algorithm="RSA", rsa_bits=2048, opts=child)
    cert = tls.SelfSignedCert(
        f"{name}-tls-cert",
        private_key_pem=key.private_key_pem,
        subject=tls.SelfSignedCertSubjectArgs(common_name=common_name, organization="synthdet"),
        ip_addresses=ip_addresses,
        dns_names=dns_names,
        validity_period_hours=CERT_VALIDITY_HOURS,
        early_renewal_hours=CERT_RENEW_HOURS,
        allowed_uses=["key_encipherment", "digital_signature", "server_auth"],
        opts=child,
    )
    return SelfSigned(cert_pem=cert.cert_pem, key_pem=pulumi.Output.secret(key.private_key_pem))


def fingerprint(cert_pem: pulumi.Output[str]) -> pulumi.Output[str | None]:
    from bootstrap.certs import fingerprint_sha256

    return cert_pem.apply(lambda pem: fingerprint_sha256(pem.encode()) if pem else None)
