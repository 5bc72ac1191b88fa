"""The replicas on GCP: their identity, network, template and regional managed instance group.

instance template (startup script) -> regional managed instance group
(autohealing on the health check, proactive rolling updates) -> an
autoscaler when a range is configured. Instances accept the instance port
only from Google's balancer and health-check ranges; SSH is not opened
(nobody logs in: they bootstrap themselves).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from infra.fleet import (
    BOOT_GRACE_S,
    HEALTH_INTERVAL_S,
    HEALTH_TIMEOUT_S,
    HEALTHY_THRESHOLD,
    UNHEALTHY_THRESHOLD,
    ReplicaShape,
)
from infra.gcp.host import BOOT_DISK_TYPE, accelerator_type, allow_tcp, own_network, scheduling
from serving.endpoint import LB_HEALTH_PATH

# Where Google's load balancers and health checks connect from
# (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges).
GOOGLE_LB_RANGES = ["130.211.0.0/22", "35.191.0.0/16"]
NAMED_PORT = "https"
# Target load-balancing utilisation for the autoscaler (of requestsPerReplica).
AUTOSCALE_UTILIZATION = 0.8


def replica_account_id(stack: str) -> str:
    """A service account id of this stack's own (6-30 of a-z, 0-9, '-'; a letter first).

    Ids are unique per project: a fixed one would make a second fleet stack in the
    same project fail, so the stack's name and a hash of it are in it.
    """
    readable = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")[:16] or "stack"
    return f"sd-{readable}-{hashlib.sha256(stack.encode()).hexdigest()[:6]}"


@dataclass
class GcpReplicaGroupArgs:
    project: str | None
    region: str
    zones: list[str]
    gpu: str
    gpu_count: int
    shape: ReplicaShape
    bucket_name: pulumi.Output[str]
    labels: dict[str, str] = field(default_factory=dict)


class GcpReplicaGroup(pulumi.ComponentResource):
    """N identical GPU instances that bootstrap themselves and heal on a failed health check."""

    instance_group: pulumi.Output[str]
    group_id: pulumi.Output[str]
    health_check_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: GcpReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("synthdet:index:GcpReplicaGroup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        shape = args.shape
        project = args.project

        # The instances' identity: reads the bucket, nothing else.
        account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=replica_account_id(pulumi.get_stack()),
            # GCP caps display names at 100 characters.
            display_name=f"synthdet replica of stack {pulumi.get_stack()[:40]} (reads the model bucket)",
            project=project,
            opts=child,
        )
        reader = gcp.storage.BucketIAMMember(
            f"{name}-sa-reads-bucket",
            bucket=args.bucket_name,
            role="roles/storage.objectViewer",
            member=account.email.apply(lambda e: f"serviceAccount:{e}"),
            opts=child,
        )
        network = own_network(f"{name}-net", project, self)
        tag = f"{name}-replica"
        firewall = allow_tcp(
            f"{name}-allow-lb", network, [shape.public_port], GOOGLE_LB_RANGES, tag, project, self
        )
        template = gcp.compute.InstanceTemplate(
            f"{name}-template",
            name_prefix=f"{name}-",
            project=project,
            region=args.region,
            machine_type=shape.machine_type,
            disks=[
                gcp.compute.InstanceTemplateDiskArgs(
                    boot=True,
                    auto_delete=True,
                    source_image=shape.image_override or shape.image.source,
                    disk_size_gb=shape.disk_size_gb,
                    disk_type=BOOT_DISK_TYPE,
                )
            ],
            guest_accelerators=[
                gcp.compute.InstanceTemplateGuestAcceleratorArgs(
                    type=accelerator_type(args.gpu), count=args.gpu_count
                )
            ],
            scheduling=gcp.compute.InstanceTemplateSchedulingArgs(**scheduling(shape.spot, replica=True)),
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
                "startup-script": shape.startup_script,
                "install-nvidia-driver": "True",
                # Nobody logs in; OS Login keeps project-wide keys off the instances too.
                "enable-oslogin": "TRUE",
                "block-project-ssh-keys": "TRUE",
            },
            tags=[tag],
            labels=args.labels,
            # Templates are immutable: a change makes a new one (Pulumi creates before it
            # deletes), the group rolls to it, then the old one goes.
            opts=child,
        )
        # The balancer's health check: a path without the URL secret (nginx answers it to
        # Google's ranges only), so the secret is not in the health check's configuration.
        health = gcp.compute.HealthCheck(
            f"{name}-health",
            project=project,
            https_health_check=gcp.compute.HealthCheckHttpsHealthCheckArgs(
                port=shape.public_port, request_path=LB_HEALTH_PATH
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
            target_size=None if shape.autoscaling else shape.min_replicas,
            named_ports=[
                gcp.compute.RegionInstanceGroupManagerNamedPortArgs(name=NAMED_PORT, port=shape.public_port)
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
            opts=pulumi.ResourceOptions(parent=self, depends_on=[firewall, reader, *shape.depends_on]),
        )
        if shape.autoscaling:
            gcp.compute.RegionAutoscaler(
                f"{name}-autoscaler",
                project=project,
                region=args.region,
                target=group.id,
                autoscaling_policy=gcp.compute.RegionAutoscalerAutoscalingPolicyArgs(
                    min_replicas=shape.min_replicas,
                    max_replicas=shape.max_replicas,
                    cooldown_period=BOOT_GRACE_S // 2,
                    load_balancing_utilization=gcp.compute.RegionAutoscalerAutoscalingPolicyLoadBalancingUtilizationArgs(
                        target=AUTOSCALE_UTILIZATION
                    ),
                ),
                opts=child,
            )
        self.instance_group = group.instance_group
        self.group_id = group.id
        self.health_check_id = health.id
        self.register_outputs({"group": group.id, "instance_group": group.instance_group})
