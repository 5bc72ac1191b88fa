"""N GPU VMs behind Google's global external Application Load Balancer.

instance template (startup script) -> regional managed instance group (autohealing,
rolling updates) <- backend service (HTTPS to the instances, health check on the
secret's health path, connection draining) <- URL map (only the secret's paths;
everything else a 404 at the balancer) <- HTTPS proxy (managed or self-signed
certificate) <- global forwarding rule on a static global IP.

Instances accept the instance port only from Google's balancer and health-check
ranges; SSH is not opened (nobody logs in: they bootstrap themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra.bucket import ArtifactsArgs, GcsArtifacts
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
from infra.gcp import BOOT_DISK_TYPE, accelerator_type
from infra.pricing import fleet_hourly, gcp_hourly, load_balancer_hourly

# Where Google's load balancers and health checks connect from
# (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges).
GOOGLE_LB_RANGES = ["130.211.0.0/22", "35.191.0.0/16"]
NAMED_PORT = "https"
LB_SCHEME = "EXTERNAL_MANAGED"  # the global external ALB (fault injection: the 404 below)
# The balancer's answer to anything but the secret's paths.
NOT_FOUND = 404
# Target load-balancing utilisation for the autoscaler (of requestsPerReplica).
AUTOSCALE_UTILIZATION = 0.8
BACKEND_TIMEOUT_S = 60


@dataclass
class GcpFleetArgs(FleetArgs):
    region: str = ""
    zones: list[str] = field(default_factory=list)
    gpu_count: int = 1
    project: str | None = None


class GcpFleet(pulumi.ComponentResource):
    fleet: Fleet

    def __init__(self, name: str, args: GcpFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:GcpFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        project = args.project

        artifacts = GcsArtifacts(
            f"{name}-artifacts",
            ArtifactsArgs(
                bundle=args.bundle,
                config_json=args.config_json,
                labels=args.labels,
                location=args.region,
                project=project,
            ),
            opts=child,
        )
        # The instances' identity: reads the bucket, nothing else.
        account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=f"{name}-replica"[:30],
            display_name="synthdet replica (reads the model bucket)",
            project=project,
            opts=child,
        )
        reader = gcp.storage.BucketIAMMember(
            f"{name}-sa-reads-bucket",
            bucket=artifacts.bucket_name,
            role="roles/storage.objectViewer",
            member=account.email.apply(lambda e: f"serviceAccount:{e}"),
            opts=child,
        )

        network = gcp.compute.Network(
            f"{name}-net", auto_create_subnetworks=True, project=project, opts=child
        )
        tag = f"{name}-replica"
        firewall = gcp.compute.Firewall(
            f"{name}-allow-lb",
            network=network.id,
            project=project,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(args.public_port)])],
            source_ranges=GOOGLE_LB_RANGES,
            target_tags=[tag],
            opts=child,
        )

        template = gcp.compute.InstanceTemplate(
            f"{name}-template",
            name_prefix=f"{name}-",
            project=project,
            region=args.region,
            machine_type=args.machine_type,
            disks=[
                gcp.compute.InstanceTemplateDiskArgs(
                    boot=True,
                    auto_delete=True,
                    source_image=args.image_override or args.image.source,
                    disk_size_gb=args.disk_size_gb,
                    disk_type=BOOT_DISK_TYPE,
                )
            ],
            guest_accelerators=[
                gcp.compute.InstanceTemplateGuestAcceleratorArgs(
                    type=accelerator_type(args.gpu), count=args.gpu_count
                )
            ],
            scheduling=gcp.compute.InstanceTemplateSchedulingArgs(
                on_host_maintenance="TERMINATE",  # GPUs cannot live-migrate
                automatic_restart=not args.spot,
                preemptible=args.spot,
                provisioning_model="SPOT" if args.spot else "STANDARD",
                # A preempted replica is deleted; the group creates a new one when it can.
                instance_termination_action="DELETE" if args.spot else None,
            ),
            network_interfaces=[
                gcp.compute.InstanceTemplateNetworkInterfaceArgs(
                    network=network.id,
                    # An ephemeral public IP for the bootstrap's downloads (apt, PyPI);
                    # the firewall admits only the balancer.
                    access_configs=[gcp.compute.InstanceTemplateNetworkInterfaceAccessConfigArgs()],
                )
            ],
            service_account=gcp.compute.InstanceTemplateServiceAccountArgs(
                email=account.email, scopes=["cloud-platform"]
            ),
            metadata={
                "startup-script": startup_script(args, artifacts.source, artifacts.config_object),
                "install-nvidia-driver": "True",
                "enable-oslogin": "TRUE",
            },
            tags=[tag],
            labels=args.labels,
            # Templates are immutable: a change makes a new one (Pulumi creates before it
            # deletes), the group rolls to it, then the old one goes.
            opts=child,
        )

        secret_health_path = args.url_secret.apply(health_path)
        health = gcp.compute.HealthCheck(
            f"{name}-health",
            project=project,
            https_health_check=gcp.compute.HealthCheckHttpsHealthCheckArgs(
                port=args.public_port, request_path=secret_health_path
            ),
            check_interval_sec=HEALTH_INTERVAL_S,
            timeout_sec=HEALTH_TIMEOUT_S,
            healthy_threshold=HEALTHY_THRESHOLD,
            unhealthy_threshold=UNHEALTHY_THRESHOLD,
            opts=child,
        )
        zones = args.zones
        group = gcp.compute.RegionInstanceGroupManager(
            f"{name}-group",
            base_instance_name=name,
            project=project,
            region=args.region,
            distribution_policy_zones=zones,
            versions=[
                gcp.compute.RegionInstanceGroupManagerVersionArgs(instance_template=template.self_link_unique)
            ],
            # With an autoscaler the autoscaler sets the size.
            target_size=None if args.autoscaling else args.min_replicas,
            named_ports=[
                gcp.compute.RegionInstanceGroupManagerNamedPortArgs(name=NAMED_PORT, port=args.public_port)
            ],
            auto_healing_policies=gcp.compute.RegionInstanceGroupManagerAutoHealingPoliciesArgs(
                health_check=health.id, initial_delay_sec=BOOT_GRACE_S
            ),
            # New template (model, settings, project): add one per zone, then remove an old one,
            # never dropping below the current size.
            update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
                type="PROACTIVE",
                minimal_action="REPLACE",
                max_surge_fixed=max(1, len(zones)),
                max_unavailable_fixed=0,
                instance_redistribution_type="PROACTIVE" if len(zones) > 1 else "NONE",
            ),
            wait_for_instances=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[firewall, reader, *artifacts.objects]),
        )
        if args.autoscaling:
            gcp.compute.RegionAutoscaler(
                f"{name}-autoscaler",
                project=project,
                region=args.region,
                target=group.id,
                autoscaling_policy=gcp.compute.RegionAutoscalerAutoscalingPolicyArgs(
                    min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas,
                    cooldown_period=BOOT_GRACE_S // 2,
                    load_balancing_utilization=gcp.compute.RegionAutoscalerAutoscalingPolicyLoadBalancingUtilizationArgs(
                        target=AUTOSCALE_UTILIZATION
                    ),
                ),
                opts=child,
            )

        backend = gcp.compute.BackendService(
            f"{name}-backend",
            project=project,
            load_balancing_scheme=LB_SCHEME,
            # Instances serve nginx's TLS (self-signed; the balancer does not verify it).
            protocol="HTTPS",
            port_name=NAMED_PORT,
            timeout_sec=BACKEND_TIMEOUT_S,
            health_checks=health.id,
            connection_draining_timeout_sec=DRAIN_S,
            backends=[
                gcp.compute.BackendServiceBackendArgs(
                    group=group.instance_group,
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
                                    full_path_match=secret_health_path
                                )
                            ],
                            service=backend.id,
                        ),
                        gcp.compute.URLMapPathMatcherRouteRuleArgs(
                            priority=2,
                            match_rules=[
                                gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(
                                    prefix_match=args.url_secret.apply(predictions_prefix)
                                )
                            ],
                            service=backend.id,
                        ),
                    ],
                )
            ],
            opts=child,
        )

        address = gcp.compute.GlobalAddress(
            f"{name}-lb-ip", project=project, address_type="EXTERNAL", ip_version="IPV4", opts=child
        )
        if args.domain:
            managed = gcp.compute.ManagedSslCertificate(
                f"{name}-cert",
                project=project,
                managed=gcp.compute.ManagedSslCertificateManagedArgs(domains=[args.domain]),
                opts=child,
            )
            certificate_id = managed.id
            cert_sha256: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        else:
            pair = self_signed(name, self, ip_addresses=address.address.apply(lambda a: [a]))
            uploaded = gcp.compute.SSLCertificate(
                f"{name}-cert",
                project=project,
                name_prefix=f"{name}-",
                certificate=pair.cert_pem,
                private_key=pair.key_pem,
                # In use by the proxy: the name prefix lets the new one exist before the old
                # one goes (Pulumi's create-before-delete).
                opts=child,
            )
            certificate_id = uploaded.id
            cert_sha256 = fingerprint(pair.cert_pem)
        proxy = gcp.compute.TargetHttpsProxy(
            f"{name}-https",
            project=project,
            url_map=url_map.id,
            ssl_certificates=[certificate_id],
            opts=child,
        )
        gcp.compute.GlobalForwardingRule(
            f"{name}-https-rule",
            project=project,
            target=proxy.id,
            ip_address=address.id,
            ip_protocol="TCP",
            port_range=str(args.public_port),
            load_balancing_scheme=LB_SCHEME,
            labels=args.labels,
            opts=child,
        )

        per_replica = gcp_hourly(
            args.region,
            args.machine_type,
            accelerator_type(args.gpu),
            args.gpu_count,
            args.disk_size_gb,
            BOOT_DISK_TYPE,
        )
        cost = fleet_hourly(per_replica, args.min_replicas, load_balancer_hourly("gcp", args.region))
        if not cost.complete:
            pulumi.log.warn(f"no price in infra/prices.yaml for: {', '.join(cost.missing)}")

        shown = args.domain or None
        self.fleet = Fleet(
            base_url=address.address.apply(lambda a: base_url(shown or a, args.public_port)),
            public_ip=address.address,
            group_id=group.id,
            cert_sha256=cert_sha256,
            bucket=artifacts.bucket_name,
            hourly_cost_usd=cost.rounded(),
            dns_records=address.address.apply(
                lambda a: [{"name": args.domain, "type": "A", "value": a}] if args.domain else []
            ),
        )
        self.register_outputs({"public_ip": address.address, "group": group.id})


def _not_found(policy_cls: type, abort_cls: type) -> Any:
    """Fault injection that aborts every request with a 404: the balancer's own "not found"."""
    return policy_cls(abort=abort_cls(http_status=NOT_FOUND, percentage=100.0))
