"""Google's global external Application Load Balancer in front of the replica group.

backend service (HTTPS to the instances, the group's health check, connection
draining) <- URL map (every path: the secret is checked by nginx on the
instances, never written into the balancer) <- HTTPS proxy (the certificate)
<- global forwarding rule on the static global IP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from infra.fleet import DRAIN_S
from infra.gcp.group import NAMED_PORT

LB_SCHEME = "EXTERNAL_MANAGED"  # the global external Application Load Balancer
BACKEND_TIMEOUT_S = 60


@dataclass
class GcpLoadBalancerArgs:
    project: str | None
    address: gcp.compute.GlobalAddress
    certificate_id: pulumi.Output[str]
    instance_group: pulumi.Output[str]
    health_check_id: pulumi.Output[str]
    public_port: int
    requests_per_replica: int
    labels: dict[str, str] = field(default_factory=dict)


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
        # Every path to the backends: the URL map knows no secret (anyone who can read the
        # project's configuration, or its audit logs, would read it there). nginx on each
        # instance checks the secret, as on a single host, and answers everything else 404.
        url_map = gcp.compute.URLMap(f"{name}-urls", project=project, default_service=backend.id, opts=child)
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
