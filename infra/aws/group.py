"""The replicas on AWS: their identity, security group, launch template and Auto Scaling group.

launch template (user data: the startup script; instance profile: reads the
bucket) -> Auto Scaling group (ELB health checks, instance refresh on a new
template version) -> a target-tracking policy on requests per target when a
range is configured. Instances accept the instance port only from the
balancer's security group; SSH is not opened (they bootstrap themselves).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.aws.balancer import AwsLoadBalancer
from infra.aws.host import ROOT_VOLUME_TYPE, egress_anywhere, lookup_ami
from infra.fleet import BOOT_GRACE_S, ReplicaShape

# Ubuntu AMIs (every Deep Learning AMI line in infra/images.py) boot from this device.
ROOT_DEVICE = "/dev/sda1"

EC2_ASSUME_ROLE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)


def read_bucket_policy(arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{arn}/*"]}],
        }
    )


@dataclass
class AwsReplicaGroupArgs:
    vpc_id: pulumi.Output[str]
    subnets: pulumi.Output[list[str]]
    balancer: AwsLoadBalancer
    shape: ReplicaShape
    requests_per_replica: int
    bucket_arn: pulumi.Output[str]
    tags: dict[str, str] = field(default_factory=dict)


class AwsReplicaGroup(pulumi.ComponentResource):
    group_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: AwsReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("synthdet:index:AwsReplicaGroup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        shape = args.shape
        tags = args.tags
        # The instances' identity: reads the bucket, nothing else.
        role = aws.iam.Role(f"{name}-role", assume_role_policy=EC2_ASSUME_ROLE, tags=tags, opts=child)
        aws.iam.RolePolicy(
            f"{name}-reads-bucket", role=role.id, policy=args.bucket_arn.apply(read_bucket_policy), opts=child
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)
        security_group = aws.ec2.SecurityGroup(
            f"{name}-replica-sg",
            description="synthdet replicas: the instance port from the load balancer only",
            vpc_id=args.vpc_id,
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    description="from the load balancer",
                    protocol="tcp",
                    from_port=shape.public_port,
                    to_port=shape.public_port,
                    security_groups=[args.balancer.security_group_id],
                )
            ],
            egress=egress_anywhere(),
            tags=tags,
            opts=child,
        )
        template = aws.ec2.LaunchTemplate(
            f"{name}-template",
            name_prefix=f"{name}-",
            image_id=lookup_ami(shape.image, shape.image_override, self),
            instance_type=shape.machine_type,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            vpc_security_group_ids=[security_group.id],
            user_data=shape.startup_script.apply(lambda s: base64.b64encode(s.encode()).decode()),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=shape.disk_size_gb,
                        volume_type=ROOT_VOLUME_TYPE,
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            # Replicas are disposable: a one-time spot request per instance, terminated on
            # interruption (the group launches a replacement).
            instance_market_options=aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(
                market_type="spot",
                spot_options=aws.ec2.LaunchTemplateInstanceMarketOptionsSpotOptionsArgs(
                    spot_instance_type="one-time", instance_interruption_behavior="terminate"
                ),
            )
            if shape.spot
            else None,
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required"
            ),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                for kind in ("instance", "volume")
            ],
            update_default_version=True,
            tags=tags,
            # The AMI lookup moves to each new DLAMI release; that must not roll the whole
            # fleet. `pulumi up --replace <the template's urn>` moves to the newest.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["imageId"]),
        )
        low, high = shape.min_replicas, shape.max_replicas
        group = aws.autoscaling.Group(
            f"{name}-asg",
            name_prefix=f"{name}-",
            vpc_zone_identifiers=args.subnets,
            min_size=low,
            max_size=high,
            desired_capacity=low,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(lambda v: str(int(v)))
            ),
            target_group_arns=[args.balancer.target_group_arn],
            # Unhealthy behind the ALB (not only a dead VM) means replace it.
            health_check_type="ELB",
            health_check_grace_period=BOOT_GRACE_S,
            # A new launch template version (model, settings, project): roll, keeping capacity.
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=100,
                    max_healthy_percentage=200,
                    instance_warmup=str(BOOT_GRACE_S // 2),
                ),
            ),
            # Instances bootstrap for minutes: do not hold `pulumi up` on them.
            wait_for_capacity_timeout="0",
            tags=[
                aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                for k, v in tags.items()
            ],
            # The autoscaler moves the desired capacity; a rerun must not reset it.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=shape.depends_on,
                ignore_changes=["desiredCapacity"] if shape.autoscaling else None,
            ),
        )
        if shape.autoscaling:
            aws.autoscaling.Policy(
                f"{name}-requests-per-replica",
                autoscaling_group_name=group.name,
                policy_type="TargetTrackingScaling",
                estimated_instance_warmup=BOOT_GRACE_S // 2,
                target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                    predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                        predefined_metric_type="ALBRequestCountPerTarget",
                        resource_label=args.balancer.resource_label,
                    ),
                    # Requests per target per minute.
                    target_value=float(args.requests_per_replica * 60),
                ),
                # The metric exists only once a rule sends requests to the target group
                # (AWS CDK adds the same dependency): else creating the policy fails.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.balancer.routing]),
            )
        self.group_name = group.name
        self.register_outputs({"group": group.name})
