"""A VM on Google Compute Engine (a GPU VM, or a CPU one with `gpu: none`): network,
firewall, static IP, SSH key, instance.

The helpers here (accelerators, scheduling, firewall rules, labels, prices)
are the GCP facts the replica fleet (`infra/gcp/group.py`) reuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra.config import machine_family
from infra.host import Host, instance_known_hosts, ssh_key
from infra.images import NO_GPU, ImageChoice
from infra.pricing import Estimate, gcp_hourly, stopped_hourly, warn_missing

# `synthdet:gpu` -> the GCE accelerator type.
ACCELERATOR_TYPES = {"t4": "nvidia-tesla-t4"}
BOOT_DISK_TYPE = "pd-balanced"
# Machine series that boot from Hyperdisk only (no Persistent Disk types), e.g. C4 and N4.
# C3, the CPU stack's default, takes pd-balanced like N1.
HYPERDISK_ONLY_SERIES = frozenset({"c4", "c4a", "c4d", "n4"})
HYPERDISK_BOOT_DISK_TYPE = "hyperdisk-balanced"
# Series on Google's Titanium hosts, whose only network interface is gVNIC (the public
# Debian and Ubuntu images support it): asked for explicitly, not left to a default.
GVNIC_ONLY_SERIES = frozenset({"c3", "c3d", "c4", "c4a", "c4d", "n4"})


@dataclass
class GcpGpuHostArgs:
    zone: str
    region: str
    machine_type: str
    gpu: str
    gpu_count: int
    image: ImageChoice
    ssh_user: str
    ssh_cidrs: list[str]
    endpoint_cidrs: list[str]
    public_port: int
    disk_size_gb: int = 125
    spot: bool = False
    max_run_hours: int = 0
    # Any image reference GCE accepts; empty: the image table's family.
    image_override: str = ""
    ssh_key_path: str = ""
    project: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def accelerator_type(gpu: str) -> str:
    try:
        return ACCELERATOR_TYPES[gpu]
    except KeyError:
        raise ValueError(f"no GCE accelerator for GPU {gpu!r}: {sorted(ACCELERATOR_TYPES)}") from None


def boot_disk_type(machine_type: str) -> str:
    """The boot disk type the machine series accepts (pd-balanced where it can be)."""
    series = machine_family("gcp", machine_type)
    return HYPERDISK_BOOT_DISK_TYPE if series in HYPERDISK_ONLY_SERIES else BOOT_DISK_TYPE


def nic_type(machine_type: str) -> str | None:
    """GVNIC where the series has nothing else; None: Compute Engine's default."""
    return "GVNIC" if machine_family("gcp", machine_type) in GVNIC_ONLY_SERIES else None


def label_value(value: str) -> str:
    """GCP label values: lowercase letters, digits, '-' and '_', at most 63."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def labels(app: str) -> dict[str, str]:
    return {"app": app, "stack": label_value(pulumi.get_stack())}


def scheduling(
    spot: bool, max_run_hours: int = 0, *, replica: bool = False, gpu: bool = True
) -> dict[str, Any]:
    """Scheduling for a VM or instance template (the same keys for both argument types).

    GPU VMs cannot live-migrate: host maintenance must TERMINATE (and restart). A
    CPU VM live-migrates (MIGRATE: it keeps serving through maintenance), except a
    spot one, which Compute Engine requires to TERMINATE. Spot VMs are never
    restarted automatically; standard ones come back. A host's spot VM (or one past
    its run limit) STOPs, keeping its disk and deployment; a preempted replica is
    deleted and its group makes a new one.

    A host whose guest powers itself off (idle stop, `synthdet:idleStopMinutes`) is
    TERMINATED, i.e. stopped with its disk and static IP, on-demand or spot alike:
    `automatic_restart` only brings back VMs Compute Engine stopped itself (a host
    error), never a guest's own shutdown, and no action here DELETEs a host.
    """
    stop_at_limit = max_run_hours > 0
    replica_action = "DELETE" if spot else None
    host_action = "STOP" if (spot or stop_at_limit) else None
    return {
        "on_host_maintenance": "TERMINATE" if (gpu or spot) else "MIGRATE",
        "automatic_restart": not spot,
        "preemptible": spot,
        "provisioning_model": "SPOT" if spot else "STANDARD",
        "instance_termination_action": replica_action if replica else host_action,
    }


def instance_scheduling(
    spot: bool, max_run_hours: int, gpu: bool = True
) -> gcp.compute.InstanceSchedulingArgs:
    limit = (
        gcp.compute.InstanceSchedulingMaxRunDurationArgs(seconds=max_run_hours * 3600)
        if max_run_hours > 0
        else None
    )
    return gcp.compute.InstanceSchedulingArgs(
        **scheduling(spot, max_run_hours, gpu=gpu), max_run_duration=limit
    )


def allow_tcp(
    name: str,
    network: gcp.compute.Network,
    ports: list[int],
    cidrs: list[str],
    tag: str,
    project: str | None,
    parent: pulumi.Resource,
) -> gcp.compute.Firewall:
    """An ingress rule: these TCP ports, from these ranges, to instances with this tag."""
    return gcp.compute.Firewall(
        name,
        network=network.id,
        project=project,
        direction="INGRESS",
        allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(p) for p in ports])],
        source_ranges=cidrs,
        target_tags=[tag],
        opts=pulumi.ResourceOptions(parent=parent),
    )


def own_network(name: str, project: str | None, parent: pulumi.Resource) -> gcp.compute.Network:
    """Our own VPC: the `default` network's stock rules open SSH to the world, a new one
    denies all ingress until our rules allow it."""
    return gcp.compute.Network(
        name, auto_create_subnetworks=True, project=project, opts=pulumi.ResourceOptions(parent=parent)
    )


def hourly_cost(region: str, machine_type: str, gpu: str, gpu_count: int, disk_size_gb: int) -> Estimate:
    accelerator = None if gpu == NO_GPU else accelerator_type(gpu)
    return warn_missing(
        gcp_hourly(region, machine_type, accelerator, gpu_count, disk_size_gb, boot_disk_type(machine_type))
    )


def stopped_cost(region: str, machine_type: str, disk_size_gb: int) -> Estimate:
    return warn_missing(stopped_hourly("gcp", region, disk_size_gb, boot_disk_type(machine_type)))


def host_metadata(user: str, public_key: pulumi.Output[str], gpu: bool) -> dict[str, Any]:
    """The VM's metadata: our SSH key only, and (with a GPU) the driver installed at first boot."""
    metadata: dict[str, Any] = {
        "ssh-keys": public_key.apply(lambda k: f"{user}:{k} {user}"),
        # Only this key logs in: project-wide keys (anyone with project metadata
        # rights) do not reach the VM, nor does OS Login, which would ignore it.
        "block-project-ssh-keys": "TRUE",
        "enable-oslogin": "FALSE",
    }
    if gpu:
        # Deep Learning VM images install the driver on first boot if it is missing.
        metadata["install-nvidia-driver"] = "True"
    return metadata


class GcpGpuHost(pulumi.ComponentResource):
    """One VM (GPU, or CPU with gpu none) with a static IP, reachable on SSH (from `ssh_cidrs`)
    and the public port. The name stays GpuHost either way: it is in the stacks' URNs."""

    host: Host

    def __init__(self, name: str, args: GcpGpuHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:GcpGpuHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = ssh_key(name, args.ssh_key_path, self)
        network = own_network(f"{name}-net", args.project, self)
        tag = f"{name}-gpu-host"
        firewalls = [
            allow_tcp(f"{name}-allow-ssh", network, [22], args.ssh_cidrs, tag, args.project, self),
            allow_tcp(
                f"{name}-allow-https",
                network,
                [args.public_port],
                args.endpoint_cidrs,
                tag,
                args.project,
                self,
            ),
        ]
        address = gcp.compute.Address(
            f"{name}-ip", region=args.region, project=args.project, labels=args.labels, opts=child
        )

        image = args.image_override or args.image.source
        if not args.image_override:
            # Fail in preview when the family is gone; the instance itself takes the family
            # path, which the provider resolves at create time and does not diff afterwards
            # (a newer image in the family does not replace the VM).
            self.image = gcp.compute.get_image_output(
                family=args.image.gcp_family,
                project=args.image.gcp_project,
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).self_link
        else:
            self.image = pulumi.Output.from_input(image)

        user = args.ssh_user
        has_gpu = args.gpu != NO_GPU
        instance = gcp.compute.Instance(
            f"{name}-vm",
            zone=args.zone,
            project=args.project,
            machine_type=args.machine_type,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=image, size=args.disk_size_gb, type=boot_disk_type(args.machine_type)
                ),
            ),
            guest_accelerators=[
                gcp.compute.InstanceGuestAcceleratorArgs(
                    type=accelerator_type(args.gpu), count=args.gpu_count
                )
            ]
            if has_gpu
            else None,
            scheduling=instance_scheduling(args.spot, args.max_run_hours, gpu=has_gpu),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    network=network.id,
                    nic_type=nic_type(args.machine_type),
                    access_configs=[
                        gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=address.address)
                    ],
                )
            ],
            metadata=host_metadata(user, key.public_openssh, has_gpu),
            tags=[tag],
            labels=args.labels,
            allow_stopping_for_update=True,
            # The static IP can only be attached to one VM: remove the old one first.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=firewalls),
        )

        cost = hourly_cost(args.region, args.machine_type, args.gpu, args.gpu_count, args.disk_size_gb)
        self.host = Host(
            address=address.address,
            instance_id=instance.id,
            ssh_user=user,
            ssh_port=22,
            ssh_private_key=key.private_key,
            ssh_key_path=key.path,
            gpu=args.gpu if has_gpu else None,
            machine_type=args.machine_type,
            hourly_cost_usd=cost.rounded(),
            ready=[instance],
            known_hosts=instance_known_hosts(instance.id),
            cloud_vm=pulumi.Output.all(instance.project, instance.zone, instance.name).apply(
                lambda v: {"cloud": "gcp", "project": v[0], "zone": v[1], "name": v[2]}
            ),
            stopped_hourly_cost_usd=stopped_cost(args.region, args.machine_type, args.disk_size_gb).rounded(),
        )
        self.register_outputs({"public_ip": address.address, "instance_id": instance.id, "image": self.image})
