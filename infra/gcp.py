"""A GPU VM on Google Compute Engine: network, firewall, static IP, SSH key, instance."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from infra.host import Host, ssh_key
from infra.images import ImageChoice
from infra.pricing import gcp_hourly

# `synthdet:gpu` -> the GCE accelerator type.
ACCELERATOR_TYPES = {"t4": "nvidia-tesla-t4"}
BOOT_DISK_TYPE = "pd-balanced"


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


def scheduling(spot: bool, max_run_hours: int) -> gcp.compute.InstanceSchedulingArgs:
    """GPU VMs cannot live-migrate: host maintenance must TERMINATE (and restart)."""
    stop_at_limit = max_run_hours > 0
    return gcp.compute.InstanceSchedulingArgs(
        on_host_maintenance="TERMINATE",
        # Spot VMs are never restarted automatically; standard ones come back.
        automatic_restart=not spot,
        preemptible=spot,
        provisioning_model="SPOT" if spot else "STANDARD",
        # STOP keeps the disk (and the deployed model): `gcloud compute instances start`.
        instance_termination_action="STOP" if (spot or stop_at_limit) else None,
        max_run_duration=gcp.compute.InstanceSchedulingMaxRunDurationArgs(seconds=max_run_hours * 3600)
        if stop_at_limit
        else None,
    )


class GcpGpuHost(pulumi.ComponentResource):
    """One GPU VM with a static IP, reachable on SSH (from `ssh_cidrs`) and the public port."""

    host: Host
    public_ip: pulumi.Output[str]
    instance_id: pulumi.Output[str]

    def __init__(self, name: str, args: GcpGpuHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:GcpGpuHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = ssh_key(name, args.ssh_key_path, self)

        # Our own network: the `default` network's stock rules open SSH to the world.
        # A new VPC denies all ingress until the rules below allow it.
        network = gcp.compute.Network(
            f"{name}-net", auto_create_subnetworks=True, project=args.project, opts=child
        )
        tag = f"{name}-gpu-host"
        firewalls = [
            self._allow(name, "ssh", network, [22], args.ssh_cidrs, tag, args.project),
            self._allow(name, "https", network, [args.public_port], args.endpoint_cidrs, tag, args.project),
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
        instance = gcp.compute.Instance(
            f"{name}-vm",
            zone=args.zone,
            project=args.project,
            machine_type=args.machine_type,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=image, size=args.disk_size_gb, type=BOOT_DISK_TYPE
                ),
            ),
            guest_accelerators=[
                gcp.compute.InstanceGuestAcceleratorArgs(
                    type=accelerator_type(args.gpu), count=args.gpu_count
                )
            ],
            scheduling=scheduling(args.spot, args.max_run_hours),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    network=network.id,
                    access_configs=[
                        gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=address.address)
                    ],
                )
            ],
            metadata={
                "ssh-keys": key.public_openssh.apply(lambda k: f"{user}:{k} {user}"),
                # Project-wide OS Login would ignore the key above.
                "enable-oslogin": "FALSE",
                # Deep Learning VM images install the driver on first boot if it is missing.
                "install-nvidia-driver": "True",
            },
            tags=[tag],
            labels=args.labels,
            allow_stopping_for_update=True,
            # The static IP can only be attached to one VM: remove the old one first.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=firewalls),
        )

        cost = gcp_hourly(
            args.region,
            args.machine_type,
            accelerator_type(args.gpu),
            args.gpu_count,
            args.disk_size_gb,
            BOOT_DISK_TYPE,
        )
        if not cost.complete:
            pulumi.log.warn(f"no price in infra/prices.yaml for: {', '.join(cost.missing)}")

        self.public_ip = address.address
        self.instance_id = instance.id
        self.host = Host(
            public_ip=address.address,
            instance_id=instance.id,
            ssh_user=user,
            ssh_port=22,
            ssh_private_key=key.private_key,
            ssh_key_path=key.path,
            gpu=args.gpu,
            machine_type=args.machine_type,
            hourly_cost_usd=cost.rounded(),
            ready=[instance],
        )
        self.register_outputs(
            {"public_ip": self.public_ip, "instance_id": self.instance_id, "image": self.image}
        )

    def _allow(
        self,
        name: str,
        what: str,
        network: gcp.compute.Network,
        ports: list[int],
        cidrs: list[str],
        tag: str,
        project: str | None,
    ) -> gcp.compute.Firewall:
        return gcp.compute.Firewall(
            f"{name}-allow-{what}",
            network=network.id,
            project=project,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(p) for p in ports])],
            source_ranges=cidrs,
            target_tags=[tag],
            opts=pulumi.ResourceOptions(parent=self),
        )
