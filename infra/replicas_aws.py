"""N GPU instances behind an Application Load Balancer, in the region's default VPC.

launch template (user data: the startup script; instance profile: reads the
bucket) -> Auto Scaling group (ELB health checks, instance refresh on a new
template) -> target group (HTTPS to the instances, health check on the secret's
health path, deregistration delay = connection draining) <- listener rule (only
the secret's paths) <- HTTPS listener (ACM certificate: imported self-signed or
DNS-validated for a domain; anything else a fixed 404) <- the ALB.

Instances accept the instance port only from the ALB's security group; SSH is
not opened (nobody logs in: they bootstrap themselves).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.aws import lookup_ami
from infra.bucket import ArtifactsArgs, S3Artifacts
from infra.fleet import (
    BOOT_GRACE_S,
    DRAIN_S,
    HEALTH_INTERVAL_S,
    HEALTH_TIMEOUT_S,
    HEALTHY_THRESHOLD,
    UNHEALTHY_THRESHOLD,
    Fleet,
    FleetArgs,
    base_url,
    fingerprint,
    health_path,
    predictions_prefix,
    self_signed,
    startup_script,
)
from infra.network import split_families
from infra.pricing import aws_hourly, fleet_hourly, load_balancer_hourly

ROOT_VOLUME_TYPE = "gp3"
# Ubuntu AMIs (every Deep Learning AMI line in infra/images.py) boot from this device.
ROOT_DEVICE = "/dev/sda1"
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
RULE_PRIORITY = 10
ALB_IDLE_TIMEOUT_S = 60


@dataclass
class AwsFleetArgs(FleetArgs):
    region: str = ""


def _egress_anywhere() -> list[aws.ec2.SecurityGroupEgressArgs]:
    return [
        aws.ec2.SecurityGroupEgressArgs(
            protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"], ipv6_cidr_blocks=["::/0"]
        )
    ]


def _read_bucket_policy(arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{arn}/*"]}],
        }
    )


EC2_ASSUME_ROLE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)


class AwsFleet(pulumi.ComponentResource):
    fleet: Fleet

    def __init__(self, name: str, args: AwsFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:AwsFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        tags = {"Name": name, **args.labels}

        artifacts = S3Artifacts(
            f"{name}-artifacts",
            ArtifactsArgs(bundle=args.bundle, config_json=args.config_json, labels=tags),
            opts=child,
        )
        role = aws.iam.Role(f"{name}-role", assume_role_policy=EC2_ASSUME_ROLE, tags=tags, opts=child)
        aws.iam.RolePolicy(
            f"{name}-reads-bucket",
            role=role.id,
            policy=artifacts.bucket_arn.apply(_read_bucket_policy),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        vpc = aws.ec2.get_vpc_output(default=True, opts=invoke)
        subnets = aws.ec2.get_subnets_output(
            filters=[
                aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc.id]),  # type: ignore[list-item]
                aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
            ],
            opts=invoke,
        ).ids

        v4, v6 = split_families(args.endpoint_cidrs)
        lb_group = aws.ec2.SecurityGroup(
            f"{name}-lb-sg",
            description="synthdet load balancer: HTTPS from the endpoint CIDRs",
            vpc_id=vpc.id,
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    description="https endpoint",
                    protocol="tcp",
                    from_port=args.public_port,
                    to_port=args.public_port,
                    cidr_blocks=v4,
                    ipv6_cidr_blocks=v6,
                )
            ],
            egress=_egress_anywhere(),
            tags=tags,
            opts=child,
        )
        instance_group = aws.ec2.SecurityGroup(
            f"{name}-replica-sg",
            description="synthdet replicas: the instance port from the load balancer only",
            vpc_id=vpc.id,
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    description="from the load balancer",
                    protocol="tcp",
                    from_port=args.public_port,
                    to_port=args.public_port,
                    security_groups=[lb_group.id],
                )
            ],
            egress=_egress_anywhere(),
            tags=tags,
            opts=child,
        )

        template = aws.ec2.LaunchTemplate(
            f"{name}-template",
            name_prefix=f"{name}-",
            image_id=lookup_ami(args.image, args.image_override, self),
            instance_type=args.machine_type,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            vpc_security_group_ids=[instance_group.id],
            user_data=startup_script(args, artifacts.source, artifacts.config_object).apply(
                lambda s: base64.b64encode(s.encode()).decode()
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.disk_size_gb,
                        volume_type=ROOT_VOLUME_TYPE,
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            instance_market_options=aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="spot")
            if args.spot
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

        secret_health_path = args.url_secret.apply(health_path)
        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            port=args.public_port,
            # Instances serve nginx's TLS (self-signed; the ALB does not verify it).
            protocol="HTTPS",
            vpc_id=vpc.id,
            target_type="instance",
            deregistration_delay=DRAIN_S,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True,
                protocol="HTTPS",
                port="traffic-port",
                path=secret_health_path,
                matcher="200",
                interval=HEALTH_INTERVAL_S,
                timeout=HEALTH_TIMEOUT_S,
                healthy_threshold=HEALTHY_THRESHOLD,
                unhealthy_threshold=UNHEALTHY_THRESHOLD,
            ),
            tags=tags,
            opts=child,
        )
        balancer = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=False,
            security_groups=[lb_group.id],
            subnets=subnets,
            idle_timeout=ALB_IDLE_TIMEOUT_S,
            drop_invalid_header_fields=True,
            tags=tags,
            opts=child,
        )

        dns_records: pulumi.Output[list[dict[str, str]]]
        if args.domain:
            requested = aws.acm.Certificate(
                f"{name}-cert", domain_name=args.domain, validation_method="DNS", tags=tags, opts=child
            )
            # Waits (up to its timeout) until the user has created the validation record.
            validated = aws.acm.CertificateValidation(
                f"{name}-cert-validation", certificate_arn=requested.arn, opts=child
            )
            certificate_arn = validated.certificate_arn
            cert_sha256: pulumi.Output[str | None] = pulumi.Output.from_input(None)
            dns_records = pulumi.Output.all(requested.domain_validation_options, balancer.dns_name).apply(
                lambda v: (
                    [
                        {
                            "name": o["resource_record_name"],
                            "type": o["resource_record_type"],
                            "value": o["resource_record_value"],
                        }
                        for o in (v[0] or [])
                    ]
                    + [{"name": args.domain, "type": "CNAME", "value": v[1]}]
                )
            )
        else:
            # The DNS name goes in the SAN only: it can be longer than a CN may be (64).
            pair = self_signed(name, self, dns_names=balancer.dns_name.apply(lambda d: [d]))
            imported = aws.acm.Certificate(
                f"{name}-cert",
                private_key=pair.key_pem,
                certificate_body=pair.cert_pem,
                tags=tags,
                # The listener uses it: import the new one before deleting the old.
                opts=child,
            )
            certificate_arn = imported.arn
            cert_sha256 = fingerprint(pair.cert_pem)
            dns_records = pulumi.Output.from_input([])

        listener = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=balancer.arn,
            port=args.public_port,
            protocol="HTTPS",
            ssl_policy=TLS_POLICY,
            certificate_arn=certificate_arn,
            # Anything but the secret's paths: the balancer's own 404, never an instance.
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="fixed-response",
                    fixed_response=aws.lb.ListenerDefaultActionFixedResponseArgs(
                        content_type="application/json",
                        message_body='{"code": 404, "error": "not found"}',
                        status_code="404",
                    ),
                )
            ],
            tags=tags,
            opts=child,
        )
        aws.lb.ListenerRule(
            f"{name}-secret-paths",
            listener_arn=listener.arn,
            priority=RULE_PRIORITY,
            actions=[aws.lb.ListenerRuleActionArgs(type="forward", target_group_arn=target_group.arn)],
            conditions=[
                aws.lb.ListenerRuleConditionArgs(
                    path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(
                        values=args.url_secret.apply(lambda s: [f"{predictions_prefix(s)}*", health_path(s)])
                    )
                )
            ],
            tags=tags,
            opts=child,
        )

        low, high = args.min_replicas, args.max_replicas
        group = aws.autoscaling.Group(
            f"{name}-asg",
            name_prefix=f"{name}-",
            vpc_zone_identifiers=subnets,
            min_size=low,
            max_size=high,
            desired_capacity=low,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(lambda v: str(int(v)))
            ),
            target_group_arns=[target_group.arn],
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
                depends_on=artifacts.objects,
                ignore_changes=["desiredCapacity"] if args.autoscaling else None,
            ),
        )
        if args.autoscaling:
            aws.autoscaling.Policy(
                f"{name}-requests-per-replica",
                autoscaling_group_name=group.name,
                policy_type="TargetTrackingScaling",
                estimated_instance_warmup=BOOT_GRACE_S // 2,
                target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                    predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                        predefined_metric_type="ALBRequestCountPerTarget",
                        resource_label=pulumi.Output.concat(
                            balancer.arn_suffix, "/", target_group.arn_suffix
                        ),
                    ),
                    # Requests per target per minute.
                    target_value=float(args.requests_per_replica * 60),
                ),
                opts=child,
            )

        per_replica = aws_hourly(args.region, args.machine_type, args.disk_size_gb, ROOT_VOLUME_TYPE)
        cost = fleet_hourly(per_replica, low, load_balancer_hourly("aws", args.region))
        if not cost.complete:
            pulumi.log.warn(f"no price in infra/prices.yaml for: {', '.join(cost.missing)}")

        address = pulumi.Output.from_input(args.domain) if args.domain else balancer.dns_name
        self.fleet = Fleet(
            base_url=address.apply(lambda a: base_url(a, args.public_port)),
            public_ip=balancer.dns_name,
            group_id=group.name,
            cert_sha256=cert_sha256,
            bucket=artifacts.bucket_name,
            hourly_cost_usd=cost.rounded(),
            dns_records=dns_records,
        )
        self.register_outputs({"dns_name": balancer.dns_name, "group": group.name})
