"""An Application Load Balancer in the region's default VPC, in front of the replicas.

HTTPS listener (the ACM certificate; every path forwarded: the secret is checked
by nginx on the instances, never written into the balancer) -> target group
(HTTPS to the instances, health check on a path without the secret,
deregistration delay = connection draining). The Auto Scaling group
(`infra/aws/group.py`) registers its instances in the target group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.aws.certificate import AwsCertificate
from infra.aws.host import egress_anywhere, ingress_rule
from infra.fleet import (
    DRAIN_S,
    HEALTH_INTERVAL_S,
    HEALTH_TIMEOUT_S,
    HEALTHY_THRESHOLD,
    UNHEALTHY_THRESHOLD,
)
from serving.endpoint import LB_HEALTH_PATH

TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
ALB_IDLE_TIMEOUT_S = 60


@dataclass
class AwsLoadBalancerArgs:
    vpc_id: pulumi.Output[str]
    subnets: pulumi.Output[list[str]]
    endpoint_cidrs: list[str]
    public_port: int
    domain: str = ""
    tags: dict[str, str] = field(default_factory=dict)


class AwsLoadBalancer(pulumi.ComponentResource):
    security_group_id: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    # "app/.../targetgroup/...": what the request-count autoscaling metric is labelled with.
    resource_label: pulumi.Output[str]
    dns_name: pulumi.Output[str]
    cert_sha256: pulumi.Output[str | None]
    dns_records: pulumi.Output[list[dict[str, str]]]
    # What routes requests to the target group (the listener): autoscaling on its
    # requests waits for it.
    routing: pulumi.Resource

    def __init__(
        self, name: str, args: AwsLoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("synthdet:index:AwsLoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        security_group = aws.ec2.SecurityGroup(
            f"{name}-lb-sg",
            description="synthdet load balancer: HTTPS from the endpoint CIDRs",
            vpc_id=args.vpc_id,
            ingress=[ingress_rule("https endpoint", args.public_port, args.endpoint_cidrs)],
            egress=egress_anywhere(),
            tags=tags,
            opts=child,
        )
        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            port=args.public_port,
            # Instances serve nginx's TLS (self-signed; the ALB does not verify it).
            protocol="HTTPS",
            vpc_id=args.vpc_id,
            target_type="instance",
            deregistration_delay=DRAIN_S,
            # A path without the URL secret: nginx answers it to the VPC (the ALB) only.
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True,
                protocol="HTTPS",
                port="traffic-port",
                path=LB_HEALTH_PATH,
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
            security_groups=[security_group.id],
            subnets=args.subnets,
            idle_timeout=ALB_IDLE_TIMEOUT_S,
            drop_invalid_header_fields=True,
            tags=tags,
            opts=child,
        )
        certificate = AwsCertificate(
            f"{name}-cert", balancer_dns_name=balancer.dns_name, domain=args.domain, tags=tags, opts=child
        )
        # Every path to the instances: no listener rule knows the secret (anyone who can
        # read the account's configuration, or CloudTrail, would read it there). nginx on
        # each instance checks the secret, as on a single host, and answers the rest 404.
        self.routing = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=balancer.arn,
            port=args.public_port,
            protocol="HTTPS",
            ssl_policy=TLS_POLICY,
            certificate_arn=certificate.certificate_arn,
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_group.arn)
            ],
            tags=tags,
            opts=child,
        )
        self.security_group_id = security_group.id
        self.target_group_arn = target_group.arn
        self.resource_label = pulumi.Output.concat(balancer.arn_suffix, "/", target_group.arn_suffix)
        self.dns_name = balancer.dns_name
        self.cert_sha256 = certificate.sha256
        if args.domain:
            self.dns_records = pulumi.Output.all(certificate.validation_records, balancer.dns_name).apply(
                lambda v: [*v[0], {"name": args.domain, "type": "CNAME", "value": v[1]}]
            )
        else:
            self.dns_records = pulumi.Output.from_input([])
        self.register_outputs({"dns_name": balancer.dns_name})
