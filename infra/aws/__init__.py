"""AWS: `build_host` (one GPU instance) and `build_fleet` (replicas behind an ALB).

Every module of the program that knows it is on AWS is in this package; the
rest of the program sees a `Host` or a `Fleet`.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.artifacts import ArtifactsArgs
from infra.aws.artifacts import S3Artifacts
from infra.aws.balancer import AwsLoadBalancer, AwsLoadBalancerArgs
from infra.aws.group import AwsReplicaGroup, AwsReplicaGroupArgs
from infra.aws.host import AwsGpuHost, AwsGpuHostArgs, hourly_cost
from infra.config import Settings
from infra.fleet import Fleet, check_fleet_settings, fleet_cost, replica_files, replica_shape
from infra.host import Host
from infra.images import select_image
from infra.network import firewall_cidrs, resolve_cidrs
from serving.endpoint import base_url

NAME = "synthdet"

__all__ = ["build_fleet", "build_host"]


def tags() -> dict[str, str]:
    return {"Name": NAME, "app": NAME, "stack": pulumi.get_stack()}


def build_host(settings: Settings) -> Host:
    stack, providers = settings.stack, settings.providers
    if stack.max_run_hours:
        pulumi.log.warn("synthdet:maxRunHours applies to GCP only; use idleStopMinutes on AWS too")
    ssh_cidrs, endpoint_cidrs = firewall_cidrs(stack)
    return AwsGpuHost(
        NAME,
        AwsGpuHostArgs(
            region=providers.aws_region,
            instance_type=stack.resolved_machine_type(),
            gpu=stack.gpu,
            image=select_image("aws", stack.gpu),
            image_override=stack.image,
            disk_size_gb=stack.disk_size_gb,
            spot=stack.spot,
            ssh_user=stack.ssh_user,
            ssh_key_path=stack.ssh_private_key_path,
            ssh_cidrs=ssh_cidrs,
            endpoint_cidrs=endpoint_cidrs,
            public_port=stack.public_port,
            availability_zone=stack.availability_zone,
            profile=pulumi.Config("aws").get("profile") or "",
            tags={"app": NAME, "stack": pulumi.get_stack()},
        ),
    ).host


class AwsFleet(pulumi.ComponentResource):
    """Replicas behind an ALB in the default VPC: bucket, balancer, group."""

    fleet: Fleet

    def __init__(self, name: str, settings: Settings, url_secret: pulumi.Output[str]) -> None:
        super().__init__("synthdet:index:AwsFleet", name, None, None)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        stack, providers = settings.stack, settings.providers
        labels = tags()
        vpc = aws.ec2.get_vpc_output(default=True, opts=invoke)
        subnets = aws.ec2.get_subnets_output(
            filters=[
                aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc.id]),  # type: ignore[list-item]
                aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
            ],
            opts=invoke,
        ).ids
        # The ALB connects from its nodes' addresses inside the VPC: nginx trusts those
        # for X-Forwarded-For and answers the health path to them only.
        files = replica_files(settings, url_secret, vpc.cidr_block.apply(lambda cidr: [cidr]))
        artifacts = S3Artifacts(
            f"{name}-artifacts",
            ArtifactsArgs(bundle=files.bundle, config_json=files.config_json, labels=labels),
            opts=child,
        )
        balancer = AwsLoadBalancer(
            name,
            AwsLoadBalancerArgs(
                vpc_id=vpc.id,
                subnets=subnets,
                endpoint_cidrs=resolve_cidrs(stack.endpoint_cidrs),
                public_port=stack.public_port,
                domain=stack.domain,
                tags=labels,
            ),
            opts=child,
        )
        shape = replica_shape(
            settings,
            "aws",
            files.bundle,
            source=artifacts.source,
            config_object=artifacts.config_object,
            objects=artifacts.objects,
        )
        group = AwsReplicaGroup(
            name,
            AwsReplicaGroupArgs(
                vpc_id=vpc.id,
                subnets=subnets,
                balancer=balancer,
                shape=shape,
                requests_per_replica=stack.requests_per_replica,
                bucket_arn=artifacts.bucket_arn,
                tags=labels,
            ),
            opts=child,
        )
        per_replica = hourly_cost(providers.aws_region, stack.resolved_machine_type(), stack.disk_size_gb)
        address = pulumi.Output.from_input(stack.domain) if stack.domain else balancer.dns_name
        self.fleet = Fleet(
            base_url=address.apply(lambda a: base_url(a, stack.public_port)),
            address=balancer.dns_name,
            group_id=group.group_name,
            cert_sha256=balancer.cert_sha256,
            bucket=artifacts.bucket_name,
            hourly_cost_usd=fleet_cost(per_replica, shape.min_replicas, "aws", providers.aws_region),
            dns_records=balancer.dns_records,
        )
        self.register_outputs({"dns_name": balancer.dns_name, "group": group.group_name})


def build_fleet(settings: Settings, url_secret: pulumi.Output[str]) -> Fleet:
    check_fleet_settings(settings)
    return AwsFleet(NAME, settings, url_secret).fleet
