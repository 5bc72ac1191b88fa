"""A GPU VM on EC2: security group, key pair, Elastic IP, instance.

The helpers here (security rules, the AMI lookup, the root volume, prices)
are the AWS facts the replica fleet (`infra/aws/group.py`) reuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.host import Host, instance_known_hosts, ssh_key
from infra.images import NO_GPU, ImageChoice, ami_filters
from infra.network import split_families
from infra.pricing import Estimate, aws_hourly, stopped_hourly, warn_missing

ROOT_VOLUME_TYPE = "gp3"


@dataclass
class AwsGpuHostArgs:
    region: str
    instance_type: str
    gpu: str
    image: ImageChoice
    ssh_cidrs: list[str]
    endpoint_cidrs: list[str]
    public_port: int
    disk_size_gb: int = 125
    spot: bool = False
    # An AMI id; empty: the newest AMI of the image table's line.
    image_override: str = ""
    ssh_user: str = ""
    ssh_key_path: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    # Empty: EC2 picks a zone (a default subnet) of the region.
    availability_zone: str = ""
    # The named profile Pulumi's provider uses (`aws:profile`), for `synthdet wake`/`status`.
    profile: str = ""


def market_options(spot: bool) -> aws.ec2.InstanceInstanceMarketOptionsArgs | None:
    """Spot capacity as a one-time request that terminates on interruption.

    A persistent request outlives the instance: `pulumi destroy` can leave it open,
    and EC2 then launches an instance nobody manages that keeps billing
    (terraform-provider-aws issue 38142). A one-time request ends with its
    instance; after an interruption `pulumi up` creates a new one.
    """
    if not spot:
        return None
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            instance_interruption_behavior="terminate", spot_instance_type="one-time"
        ),
    )


def shutdown_behavior(spot: bool) -> str:
    """What EC2 does when the instance powers itself off (idle stop: `systemctl poweroff`).

    On-demand: stop, keeping the root volume, the Elastic IP and the deployment, so the
    same URL and QR code come back with `synthdet wake`. A one-time spot instance cannot
    be stopped, only terminated (the config refuses idle stop with spot on AWS).
    """
    return "terminate" if spot else "stop"


def ingress_rule(description: str, port: int, cidrs: list[str]) -> aws.ec2.SecurityGroupIngressArgs:
    v4, v6 = split_families(cidrs)
    return aws.ec2.SecurityGroupIngressArgs(
        description=description,
        protocol="tcp",
        from_port=port,
        to_port=port,
        cidr_blocks=v4,
        ipv6_cidr_blocks=v6,
    )


def egress_anywhere() -> list[aws.ec2.SecurityGroupEgressArgs]:
    """Out to anywhere: the bootstrap downloads packages (apt, PyPI, torch)."""
    return [
        aws.ec2.SecurityGroupEgressArgs(
            protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"], ipv6_cidr_blocks=["::/0"]
        )
    ]


def hourly_cost(region: str, instance_type: str, disk_size_gb: int) -> Estimate:
    return warn_missing(aws_hourly(region, instance_type, disk_size_gb, ROOT_VOLUME_TYPE))


class AwsGpuHost(pulumi.ComponentResource):
    """One GPU instance with an Elastic IP, reachable on SSH (from `ssh_cidrs`) and the port."""

    host: Host

    def __init__(self, name: str, args: AwsGpuHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:AwsGpuHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = ssh_key(name, args.ssh_key_path, self)
        tags = {"Name": name, **args.tags}

        key_pair = aws.ec2.KeyPair(f"{name}-key", public_key=key.public_openssh, tags=tags, opts=child)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="synthdet GPU host: SSH from the deployer, the endpoint port",
            ingress=[
                ingress_rule("ssh", 22, args.ssh_cidrs),
                ingress_rule("https endpoint", args.public_port, args.endpoint_cidrs),
            ],
            egress=egress_anywhere(),
            tags=tags,
            opts=child,
        )
        ami = lookup_ami(args.image, args.image_override, self)
        instance = aws.ec2.Instance(
            f"{name}-vm",
            ami=ami,
            instance_type=args.instance_type,
            key_name=key_pair.key_name,
            vpc_security_group_ids=[group.id],
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=args.disk_size_gb,
                volume_type=ROOT_VOLUME_TYPE,
                delete_on_termination=True,
                encrypted=True,
            ),
            instance_market_options=market_options(args.spot),
            instance_initiated_shutdown_behavior=shutdown_behavior(args.spot),
            availability_zone=args.availability_zone or None,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            tags=tags,
            # The AMI lookup moves to each new DLAMI release; that must not replace a
            # running host. `pulumi up --replace <instance urn>` moves to the newest.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["ami"]),
        )
        eip = aws.ec2.Eip(f"{name}-ip", domain="vpc", tags=tags, opts=child)
        association = aws.ec2.EipAssociation(
            f"{name}-ip-assoc",
            instance_id=instance.id,
            allocation_id=eip.allocation_id,
            opts=child,
        )
        cost = hourly_cost(args.region, args.instance_type, args.disk_size_gb)

        self.ami = ami
        self.host = Host(
            address=eip.public_ip,
            instance_id=instance.id,
            ssh_user=args.ssh_user or args.image.ssh_user,
            ssh_port=22,
            ssh_private_key=key.private_key,
            ssh_key_path=key.path,
            gpu=args.gpu if args.gpu != NO_GPU else None,
            machine_type=args.instance_type,
            hourly_cost_usd=cost.rounded(),
            ready=[instance, association],
            known_hosts=instance_known_hosts(instance.id),
            cloud_vm=instance.id.apply(
                lambda i: {"cloud": "aws", "region": args.region, "instance_id": i, "profile": args.profile}
            ),
            stopped_hourly_cost_usd=warn_missing(
                stopped_hourly("aws", args.region, args.disk_size_gb, ROOT_VOLUME_TYPE)
            ).rounded(),
        )
        self.register_outputs({"public_ip": eip.public_ip, "instance_id": instance.id, "ami": self.ami})


def lookup_ami(image: ImageChoice, image_override: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """The image's AMI id: the user's override, or the newest AMI matching its owner and name filter."""
    if image_override:
        return pulumi.Output.from_input(image_override)
    return aws.ec2.get_ami_output(
        most_recent=True,
        owners=list(image.ami_owners),
        include_deprecated=image.ami_include_deprecated,
        filters=[aws.ec2.GetAmiFilterArgs(name=k, values=v) for k, v in ami_filters(image).items()],
        opts=pulumi.InvokeOutputOptions(parent=parent),
    ).id
