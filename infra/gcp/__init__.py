"""Google Cloud: `build_host` (one GPU VM) and `build_fleet` (replicas behind Google's balancer).

Every module of the program that knows it is on GCP is in this package; the
rest of the program sees a `Host` or a `Fleet`.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.config import Settings
from infra.fleet import Fleet, check_fleet_settings, fleet_cost, replica_files, replica_shape
from infra.gcp.artifacts import GcsArtifacts, GcsArtifactsArgs
from infra.gcp.balancer import GcpLoadBalancer, GcpLoadBalancerArgs
from infra.gcp.certificate import GcpCertificate
from infra.gcp.group import GOOGLE_LB_RANGES, GcpReplicaGroup, GcpReplicaGroupArgs
from infra.gcp.host import GcpGpuHost, GcpGpuHostArgs, hourly_cost, labels
from infra.host import Host
from infra.images import select_image
from infra.network import firewall_cidrs
from serving.endpoint import base_url

NAME = "synthdet"
# The login user the gcp stacks put in the instance's `ssh-keys` (GCP's guest agent
# creates it with passwordless sudo). Never the service account's name.
DEFAULT_SSH_USER = "synthdet"

__all__ = ["build_fleet", "build_host"]


def build_host(settings: Settings) -> Host:
    stack, providers = settings.stack, settings.providers
    ssh_cidrs, endpoint_cidrs = firewall_cidrs(stack)
    return GcpGpuHost(
        NAME,
        GcpGpuHostArgs(
            zone=providers.gcp_zone,
            region=providers.gcp_region,
            project=providers.gcp_project,
            machine_type=stack.resolved_machine_type(),
            gpu=stack.gpu,
            gpu_count=stack.gpu_count,
            image=select_image("gcp", stack.gpu),
            image_override=stack.image,
            disk_size_gb=stack.disk_size_gb,
            spot=stack.spot,
            max_run_hours=stack.max_run_hours,
            ssh_user=stack.ssh_user or DEFAULT_SSH_USER,
            ssh_key_path=stack.ssh_private_key_path,
            ssh_cidrs=ssh_cidrs,
            endpoint_cidrs=endpoint_cidrs,
            public_port=stack.public_port,
            labels=labels(NAME),
        ),
    ).host


class GcpFleet(pulumi.ComponentResource):
    """Replicas behind the global load balancer: address, bucket, group, certificate, balancer."""

    fleet: Fleet

    def __init__(self, name: str, settings: Settings, url_secret: pulumi.Output[str]) -> None:
        super().__init__("synthdet:index:GcpFleet", name, None, None)
        child = pulumi.ResourceOptions(parent=self)
        stack, providers = settings.stack, settings.providers
        project, region = providers.gcp_project, providers.gcp_region
        tags = labels(NAME)
        if any(c not in ("0.0.0.0/0", "::/0") for c in stack.endpoint_cidrs):
            pulumi.log.warn(
                "synthdet:endpointCidrs is not enforced by the GCP load balancer (it would need "
                "Cloud Armor); the URL secret is the access control"
            )
        address = gcp_address(name, project, child)
        # The balancer connects from Google's ranges and names its own address last in
        # X-Forwarded-For: nginx trusts both to find the phone's address.
        balancer_cidrs = address.address.apply(lambda ip: [*GOOGLE_LB_RANGES, f"{ip}/32"])
        files = replica_files(settings, url_secret, balancer_cidrs)
        artifacts = GcsArtifacts(
            f"{name}-artifacts",
            GcsArtifactsArgs(
                bundle=files.bundle,
                config_json=files.config_json,
                labels=tags,
                location=region,
                project=project,
            ),
            opts=child,
        )
        shape = replica_shape(
            settings,
            "gcp",
            files.bundle,
            source=artifacts.source,
            config_object=artifacts.config_object,
            objects=artifacts.objects,
        )
        group = GcpReplicaGroup(
            name,
            GcpReplicaGroupArgs(
                project=project,
                region=region,
                zones=list(stack.replica_zones) or [providers.gcp_zone],
                gpu=stack.gpu,
                gpu_count=stack.gpu_count,
                shape=shape,
                bucket_name=artifacts.bucket_name,
                labels=tags,
            ),
            opts=child,
        )
        certificate = GcpCertificate(
            f"{name}-cert", address=address.address, domain=stack.domain, project=project, opts=child
        )
        GcpLoadBalancer(
            name,
            GcpLoadBalancerArgs(
                project=project,
                address=address,
                certificate_id=certificate.certificate_id,
                instance_group=group.instance_group,
                health_check_id=group.health_check_id,
                public_port=stack.public_port,
                requests_per_replica=stack.requests_per_replica,
                labels=tags,
            ),
            opts=child,
        )
        per_replica = hourly_cost(
            region, stack.resolved_machine_type(), stack.gpu, stack.gpu_count, stack.disk_size_gb
        )
        shown = stack.domain or None
        self.fleet = Fleet(
            base_url=address.address.apply(lambda a: base_url(shown or a, stack.public_port)),
            address=address.address,
            group_id=group.group_id,
            cert_sha256=certificate.sha256,
            bucket=artifacts.bucket_name,
            hourly_cost_usd=fleet_cost(per_replica, shape.min_replicas, "gcp", region),
            dns_records=address.address.apply(
                lambda a: [{"name": stack.domain, "type": "A", "value": a}] if stack.domain else []
            ),
        )
        self.register_outputs({"address": address.address, "group": group.group_id})


def gcp_address(name: str, project: str | None, opts: pulumi.ResourceOptions) -> gcp.compute.GlobalAddress:
    return gcp.compute.GlobalAddress(
        f"{name}-lb-ip", project=project, address_type="EXTERNAL", ip_version="IPV4", opts=opts
    )


def build_fleet(settings: Settings, url_secret: pulumi.Output[str]) -> Fleet:
    check_fleet_settings(settings)
    return GcpFleet(NAME, settings, url_secret).fleet
