"""The Pulumi program: read the stack's settings once, build the host, deploy, export.

`pulumi up --stack gcp-t4` (or aws-m60, aws-t4, ssh) runs this file. Which
cloud is a config value (`synthdet:cloud`); each cloud is one component that
returns the same `Host`, and the bootstrap resource only ever sees that.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

# Pulumi runs this directory as a script, which puts the directory itself first
# on sys.path: then `aws`, `gcp` or `config` would resolve to our modules, not
# packages. Import through the repository root instead (`infra.*`, `bootstrap.*`),
# which also works when the project is not pip-installed.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not (p and Path(p).resolve() == _HERE)]
_REPO = str(_HERE.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import pulumi  # noqa: E402
import pulumi_random as random  # noqa: E402

from bootstrap.boot_local import boot_config  # noqa: E402
from bootstrap.bundle import build_bundle  # noqa: E402
from bootstrap.startup_script import config_json, config_models  # noqa: E402
from infra.aws import AwsGpuHost, AwsGpuHostArgs  # noqa: E402
from infra.bootstrap_resource import Bootstrap, BootstrapArgs  # noqa: E402
from infra.config import Settings, read_settings  # noqa: E402
from infra.existing import ExistingHost, ExistingHostArgs  # noqa: E402
from infra.fingerprint import deploy_fingerprints  # noqa: E402
from infra.fleet import Fleet  # noqa: E402
from infra.gcp import GcpGpuHost, GcpGpuHostArgs  # noqa: E402
from infra.host import Host  # noqa: E402
from infra.images import select_image  # noqa: E402
from infra.network import resolve_cidrs  # noqa: E402
from infra.pricing import load_prices  # noqa: E402
from infra.replicas_aws import AwsFleet, AwsFleetArgs  # noqa: E402
from infra.replicas_gcp import GcpFleet, GcpFleetArgs  # noqa: E402

NAME = "synthdet"
KNOWN_HOSTS_DIR = Path.home() / ".config" / "synthdet" / "known_hosts.d"
DEFAULT_GCP_USER = "synthdet"
DEFAULT_SSH_STACK_USER = "root"


def build_host(settings: Settings) -> Host:
    """The one place that knows which cloud this stack is on."""
    stack, providers = settings.stack, settings.providers
    if stack.cloud == "ssh":
        return ExistingHost(
            NAME,
            ExistingHostArgs(
                host=stack.ssh_host,
                user=stack.ssh_user or DEFAULT_SSH_STACK_USER,
                key_path=stack.ssh_private_key_path,
                port=stack.ssh_port,
                gpu=stack.gpu or None,
            ),
        ).host

    ssh_cidrs = resolve_cidrs(stack.ssh_allowed_cidrs)
    endpoint_cidrs = resolve_cidrs(stack.endpoint_cidrs)
    if stack.ssh_open_to_world():
        pulumi.log.warn("synthdet:sshAllowedCidrs opens SSH to the whole internet")
    image = select_image(stack.cloud, stack.gpu)
    labels = {"app": NAME, "stack": _label(pulumi.get_stack())}
    if stack.cloud == "gcp":
        return GcpGpuHost(
            NAME,
            GcpGpuHostArgs(
                zone=providers.gcp_zone,
                region=providers.gcp_region,
                project=providers.gcp_project,
                machine_type=stack.resolved_machine_type(),
                gpu=stack.gpu,
                gpu_count=stack.gpu_count,
                image=image,
                image_override=stack.image,
                disk_size_gb=stack.disk_size_gb,
                spot=stack.spot,
                max_run_hours=stack.max_run_hours,
                ssh_user=stack.ssh_user or DEFAULT_GCP_USER,
                ssh_key_path=stack.ssh_private_key_path,
                ssh_cidrs=ssh_cidrs,
                endpoint_cidrs=endpoint_cidrs,
                public_port=stack.public_port,
                labels=labels,
            ),
        ).host
    if stack.max_run_hours:
        pulumi.log.warn("synthdet:maxRunHours applies to GCP only; use idleStopMinutes on AWS")
    return AwsGpuHost(
        NAME,
        AwsGpuHostArgs(
            region=providers.aws_region,
            instance_type=stack.resolved_machine_type(),
            gpu=stack.gpu,
            image=image,
            image_override=stack.image,
            disk_size_gb=stack.disk_size_gb,
            spot=stack.spot,
            idle_stop_minutes=stack.idle_stop_minutes,
            ssh_user=stack.ssh_user,
            ssh_key_path=stack.ssh_private_key_path,
            ssh_cidrs=ssh_cidrs,
            endpoint_cidrs=endpoint_cidrs,
            public_port=stack.public_port,
            tags=labels,
        ),
    ).host


def build_bootstrap(settings: Settings, host: Host) -> Bootstrap:
    stack = settings.stack
    models = stack.model_specs()
    serving = stack.serving_settings.model_dump(mode="json")
    # Stable across runs (the phone keeps working after an update); rotate it with
    # `pulumi up --replace <url-secret urn>`. Letters and digits only: a URL path segment.
    url_secret = random.RandomPassword("url-secret", length=32, special=False)
    pip = stack.pip_source()
    cloud_host = stack.cloud != "ssh"
    return Bootstrap(
        "bootstrap",
        BootstrapArgs(
            host=host.public_ip,
            port=host.ssh_port,
            user=host.ssh_user,
            private_key=host.ssh_private_key,
            instance_id=host.instance_id,
            # A new VM behind the same static IP has a new host key: one file per instance.
            known_hosts=host.instance_id.apply(_known_hosts_file) if cloud_host else None,
            models=[
                {
                    "name": m.name,
                    "checkpoint": str(m.checkpoint),
                    "label_map": str(m.label_map) if m.label_map else None,
                }
                for m in models
            ],
            fingerprints=deploy_fingerprints(models, serving),
            serving=serving,
            public_port=stack.public_port,
            url_secret=url_secret.result,
            pip={
                "index_url": pip.index_url,
                "find_links": pip.find_links,
                "trusted_hosts": list(pip.trusted_hosts),
            },
            torch_index_url=stack.torch_index_url,
            torch_version=stack.torch_version,
        ),
        # The host must exist (and have its address) before SSH can reach it.
        opts=pulumi.ResourceOptions(depends_on=host.ready),
    )


def export_outputs(settings: Settings, host: Host, bootstrap: Bootstrap) -> None:
    endpoint: pulumi.Output[str] = pulumi.Output.secret(bootstrap.endpoint)  # type: ignore[arg-type]
    pulumi.export("endpoint", endpoint)
    pulumi.export("endpoints", pulumi.Output.secret(bootstrap.endpoints))
    pulumi.export("public_ip", host.public_ip)
    pulumi.export("instance_id", host.instance_id)
    pulumi.export("ssh_command", host.public_ip.apply(lambda ip: ssh_command(host, ip)))
    pulumi.export("ssh_private_key", pulumi.Output.secret(host.ssh_private_key))
    pulumi.export("cert_sha256", bootstrap.cert_sha256)
    pulumi.export("host_facts", bootstrap.host_facts)
    pulumi.export("hourly_cost_usd", host.hourly_cost_usd)
    pulumi.export("hourly_cost_as_of", load_prices().as_of.isoformat())

    export_qr(settings, endpoint)


def export_qr(settings: Settings, endpoint: pulumi.Output[str]) -> None:
    qr = endpoint.apply(qr_text)
    if settings.stack.show_qr:
        # The QR is for the deployer's screen: shown at the end of `pulumi up` and by
        # `pulumi stack output qr`. It encodes the secret URL (showQr=false keeps it secret).
        qr = pulumi.Output.unsecret(qr).apply(_announce)
    pulumi.export("qr", qr)


def qr_text(url: str) -> str:
    from bootstrap.qr import render_terminal

    # Plain blocks, no colour codes: Pulumi's output and logs do not pass ANSI through.
    return render_terminal(url, ansi=False)


def _announce(qr: str) -> str:
    """Log the QR (Pulumi lists logs at the end of `pulumi up`) and pass it on."""
    pulumi.log.info(
        "Scan this with the SynthDet Viewer (dark blocks on a light background; "
        "`pulumi stack output qr` prints it again):\n" + qr
    )
    return qr


def ssh_command(host: Host, ip: str) -> str:
    port = f" -p {host.ssh_port}" if host.ssh_port != 22 else ""
    if host.ssh_key_path:
        return f"ssh -i {host.ssh_key_path}{port} {host.ssh_user}@{ip}"
    key_file = f"synthdet-{pulumi.get_stack()}.key"
    return (
        f"pulumi stack output ssh_private_key --show-secrets > {key_file} && "
        f"chmod 600 {key_file} && ssh -i {key_file}{port} {host.ssh_user}@{ip}"
    )


def _known_hosts_file(instance_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", instance_id)[-120:]
    return str(KNOWN_HOSTS_DIR / f"{pulumi.get_project()}-{pulumi.get_stack()}-{safe}")


def _label(value: str) -> str:
    """GCP label values: lowercase letters, digits, '-' and '_', at most 63."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def build_fleet(settings: Settings, url_secret: pulumi.Output[str]) -> Fleet:
    """Replicas behind the cloud's load balancer; each bootstraps itself from the bucket."""
    stack, providers = settings.stack, settings.providers
    cloud = stack.cloud
    if cloud == "ssh":  # config validation refuses replicas on the ssh stack already
        raise ValueError("replicas need a cloud stack (gcp or aws)")
    models = stack.model_specs()
    serving = stack.serving_settings
    serving_json = serving.model_dump(mode="json")
    deploy_fingerprints(models, serving_json)  # a missing checkpoint fails here, clearly
    # The wheel of this project and every model archive, built here, uploaded to the bucket.
    bundle = build_bundle(models, serving)
    pip = stack.pip_source()
    config = url_secret.apply(
        lambda secret: config_json(
            boot_config(
                models=config_models(bundle),
                serving=serving_json,
                public_port=stack.public_port,
                url_secret=secret,
                pip=pip,
                torch_index_url=stack.torch_index_url,
                torch_version=stack.torch_version,
            )
        )
    )
    for key, value in (("maxRunHours", stack.max_run_hours), ("idleStopMinutes", stack.idle_stop_minutes)):
        if value:
            pulumi.log.warn(f"synthdet:{key} applies to the single host only, not to replicas")
    endpoint_cidrs = resolve_cidrs(stack.endpoint_cidrs)
    low, high = stack.replica_range
    common: dict[str, Any] = {
        "bundle": bundle,
        "config_json": pulumi.Output.secret(config),
        "url_secret": pulumi.Output.secret(url_secret),
        "machine_type": stack.resolved_machine_type(),
        "gpu": stack.gpu,
        "image": select_image(cloud, stack.gpu),
        "min_replicas": low,
        "max_replicas": high,
        "requests_per_replica": stack.requests_per_replica,
        "public_port": stack.public_port,
        "endpoint_cidrs": endpoint_cidrs,
        "disk_size_gb": stack.disk_size_gb,
        "spot": stack.spot,
        "image_override": stack.image,
        "domain": stack.domain,
        "pip": pip,
        "labels": {"app": NAME, "stack": _label(pulumi.get_stack())},
    }
    if stack.cloud == "gcp":
        if any(c not in ("0.0.0.0/0", "::/0") for c in endpoint_cidrs):
            pulumi.log.warn(
                "synthdet:endpointCidrs is not enforced by the GCP load balancer (it would need "
                "Cloud Armor); the URL secret is the access control"
            )
        return GcpFleet(
            NAME,
            GcpFleetArgs(
                **common,
                region=providers.gcp_region,
                zones=list(stack.replica_zones) or [providers.gcp_zone],
                gpu_count=stack.gpu_count,
                project=providers.gcp_project,
            ),
        ).fleet
    return AwsFleet(NAME, AwsFleetArgs(**common, region=providers.aws_region)).fleet


def export_fleet_outputs(settings: Settings, fleet: Fleet, url_secret: pulumi.Output[str]) -> None:
    """The same outputs as the single host, describing the load balancer's URL."""
    names = [m.name for m in settings.stack.model_specs()]
    endpoints = pulumi.Output.all(fleet.base_url, url_secret).apply(
        lambda v: {name: f"{v[0]}/{v[1]}/predictions/{name}" for name in names}
    )
    endpoint: pulumi.Output[str] = pulumi.Output.secret(
        endpoints.apply(lambda e: e.get("synthdet", e[names[0]]))
    )  # type: ignore[arg-type]
    low, high = settings.stack.replica_range
    pulumi.export("endpoint", endpoint)
    pulumi.export("endpoints", pulumi.Output.secret(endpoints))
    pulumi.export("public_ip", fleet.public_ip)
    pulumi.export("load_balancer_url", fleet.base_url)
    pulumi.export("instance_id", fleet.group_id)
    pulumi.export("replicas", {"min": low, "max": high})
    pulumi.export("bucket", fleet.bucket)
    pulumi.export("dns_records", fleet.dns_records)
    pulumi.export("cert_sha256", fleet.cert_sha256)
    pulumi.export("hourly_cost_usd", fleet.hourly_cost_usd)
    pulumi.export("hourly_cost_as_of", load_prices().as_of.isoformat())
    export_qr(settings, endpoint)


def main() -> None:
    settings = read_settings()
    if settings.stack.behind_load_balancer:
        # Stable across runs; rotate with `pulumi up --replace <url-secret urn>` (a rollout).
        url_secret = random.RandomPassword("url-secret", length=32, special=False).result
        export_fleet_outputs(settings, build_fleet(settings, url_secret), url_secret)
        return
    host = build_host(settings)
    bootstrap = build_bootstrap(settings, host)
    export_outputs(settings, host, bootstrap)


if __name__ == "__main__":
    main()
