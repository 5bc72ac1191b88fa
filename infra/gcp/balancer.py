"""Google's global external Application Load Balancer in front of the replica group.

backend service (HTTPS to the instances, the group's health check, connection
draining) <- URL map (only the secret's paths; everything else a 404 at the
balancer) <- HTTPS proxy (the certificate) <- global forwarding rule on the
static global IP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra.fleet import DRAIN_S
from infra.gcp.group import NAMED_PORT
from serving.endpoint import health_path, prediction_path

LB_SCHEME = "EXTERNAL_MANAGED"  # the global external ALB (fault injection: the 404 below)
# The balancer's answer to anything but the secret's paths.
NOT_FOUND = 404
BACKEND_TIMEOUT_S = 60


@dataclass
class GcpLoadBalancerArgs:
    project: str | None
    address: gcp.compute.GlobalAddress
    certificate_id: pulumi.Output[str]
    instance_group: pulumi.Output[str]
    health_check_id: pulumi.Output[str]
    url_secret: pulumi.Output[str]
    public_port: int
    requests_per_replica: int
    labels: dict[str, str] = field(default_factory=dict)


def _not_found(policy_cls: type, abort_cls: type) -> Any:
    """Fault injection that aborts every request with a 404: the balancer's own "not found"."""
    return policy_cls(abort=abort_cls(http_status=NOT_FOUND, percentage=100.0))


class GcpLoadBalancer(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: GcpLoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("synthdet:index:GcpLoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        project = args.project
        backend = gcp.compute.BackendService(
            f"{name}-backend",
            project=project,
            load_balancing_scheme=LB_SCHEME,
            # Instances serve nginx's TLS (self-signed; the balancer does not verify it).
            protocol="HTTPS",
            port_name=NAMED_PORT,
            timeout_sec=BACKEND_TIMEOUT_S,
            health_checks=args.health_check_id,
            connection_draining_timeout_sec=DRAIN_S,
            backends=[
                gcp.compute.BackendServiceBackendArgs(
                    group=args.instance_group,
                    balancing_mode="RATE",
                    max_rate_per_instance=args.requests_per_replica,
                    capacity_scaler=1.0,
                )
            ],
            # Request logs would hold the URL, and so the secret.
            log_config=gcp.compute.BackendServiceLogConfigArgs(enable=False),
            opts=child,
        )
        url_map = gcp.compute.URLMap(
            f"{name}-urls",
            project=project,
            default_service=backend.id,
            default_route_action=gcp.compute.URLMapDefaultRouteActionArgs(
                fault_injection_policy=_not_found(
                    gcp.compute.URLMapDefaultRouteActionFaultInjectionPolicyArgs,
                    gcp.compute.URLMapDefaultRouteActionFaultInjectionPolicyAbortArgs,
                )
            ),
            host_rules=[gcp.compute.URLMapHostRuleArgs(hosts=["*"], path_matcher="secret")],
            path_matchers=[
                gcp.compute.URLMapPathMatcherArgs(
                    name="secret",
                    default_service=backend.id,
                    default_route_action=gcp.compute.URLMapPathMatcherDefaultRouteActionArgs(
                        fault_injection_policy=_not_found(
                            gcp.compute.URLMapPathMatcherDefaultRouteActionFaultInjectionPolicyArgs,
                            gcp.compute.URLMapPathMatcherDefaultRouteActionFaultInjectionPolicyAbortArgs,
                        )
                    ),
                    route_rules=[
                        gcp.compute.URLMapPathMatcherRouteRuleArgs(
                            priority=1,
                            match_rules=[
                                gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(
                                    full_path_match=args.url_secret.apply(health_path)
                                )
                            ],
                            service=backend.id,
                        ),
                        gcp.compute.URLMapPathMatcherRouteRuleArgs(
                            priority=2,
                            match_rules=[
                                gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(
                                    # "/SECRET/predictions/" + any model name
                                    prefix_match=args.url_secret.apply(lambda s: prediction_path("", s))
                                )
                            ],
                            service=backend.id,
                        ),
                    ],
                )
            ],
            opts=child,
        )
        proxy = gcp.compute.TargetHttpsProxy(
            f"{name}-https",
            project=project,
            url_map=url_map.id,
            ssl_certificates=[args.certificate_id],
            opts=child,
        )
        gcp.compute.GlobalForwardingRule(
            f"{name}-https-rule",
            project=project,
            target=proxy.id,
            ip_address=args.address.id,
            ip_protocol="TCP",
            port_range=str(args.public_port),
            load_balancing_scheme=LB_SCHEME,
            labels=args.labels,
            opts=child,
        )
        self.register_outputs({"url_map": url_map.id})
