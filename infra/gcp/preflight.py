"""The pre-flight check on Google Cloud (infra/preflight.py runs it; every finding is one line).

In order: credentials and project, the Compute Engine API (and billing), the
region's GPU (and CPU) quota and the project's GPUS_ALL_REGIONS against what
the stack needs, the GPU and machine type in the zone and the other zones of
the region that offer both, the boot image, and room for the stack's network,
firewall rules and address.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from infra.gcp.cloud_api import (
    COMPUTE_API,
    STORAGE_API,
    ApiDisabled,
    BillingDisabled,
    GcpApi,
    GcpApiError,
    ImageInfo,
    NotFound,
    NotLoggedIn,
    Offline,
    PermissionDenied,
    Quota,
)
from infra.gcp.host import ACCELERATOR_TYPES
from infra.images import GCP_IMAGE_PROJECT, NO_GPU, select_image
from infra.preflight import CheckContext, CloudResult, Finding, Stop, blocker, ok, warning

T = TypeVar("T")
ZONE_KEY = "gcp:zone"
API_NAMES = {COMPUTE_API: "Compute Engine API", STORAGE_API: "Cloud Storage API"}
# A single host makes one VPC, two firewall rules and one static address (infra/gcp/host.py).
HOST_NETWORK_NEEDS = {"NETWORKS": 1, "FIREWALLS": 2}
HOST_REGION_NEEDS = {"STATIC_ADDRESSES": 1}
IMAGE_REFERENCE = re.compile(
    r"^(?:https://(?:www|compute)\.googleapis\.com/compute/v1/)?projects/(?P<project>[^/]+)/global/images/"
    r"(?:family/(?P<family>[^/]+)|(?P<name>[^/]+))$"
)


def gpu_quota_metric(accelerator: str, *, spot: bool = False) -> str:
    """nvidia-tesla-t4 -> NVIDIA_T4_GPUS (PREEMPTIBLE_NVIDIA_T4_GPUS for spot)."""
    model = accelerator.removeprefix("nvidia-").removeprefix("tesla-")
    metric = f"NVIDIA_{model.upper().replace('-', '_')}_GPUS"
    return f"PREEMPTIBLE_{metric}" if spot else metric


def quota_id(metric: str, regional: bool) -> str:
    """The Cloud Quotas id of a quota metric: GPUS_ALL_REGIONS -> GPUS-ALL-REGIONS-per-project."""
    return metric.replace("_", "-") + ("-per-project-region" if regional else "-per-project")


def quota_page(project: str, metric: str) -> str:
    """The console's quota page of the project, and what to filter it by."""
    return (
        f"https://console.cloud.google.com/iam-admin/quotas?project={project} "
        f"(filter: compute.googleapis.com/{metric.lower()})"
    )


def quota_request(project: str, metric: str, need: float, region: str | None) -> str:
    dims = f" --dimensions=region={region}" if region else ""
    return (
        f"request {need:g} or more at {quota_page(project, metric)} or with "
        "`gcloud quotas preferences create "
        f"--service=compute.googleapis.com --quota-id={quota_id(metric, region is not None)}{dims} "
        f"--preferred-value={need:g} --project={project}`"
    )


@dataclass
class _Gcp:
    ctx: CheckContext
    api: GcpApi
    findings: list[Finding] = field(default_factory=list)

    @property
    def project(self) -> str:
        return self.api.project

    def guarded(self, what: str, call: Callable[[], T]) -> T | None:
        """Run one look-up; None when it was not allowed (a warning says so)."""
        try:
            return call()
        except (NotLoggedIn, Offline) as exc:
            raise Stop(_unreachable(exc)) from None
        except ApiDisabled as exc:
            raise Stop(self.api_disabled(exc.service)) from None
        except BillingDisabled as exc:
            raise Stop(self.billing(str(exc))) from None
        except NotFound:
            raise  # the caller knows what a missing thing means there
        except GcpApiError as exc:  # not allowed to look, or the API failed: say so, go on
            topic = "permission" if isinstance(exc, PermissionDenied) else "api"
            self.findings.append(warning(topic, f"cannot check {what}: {exc}"))
            return None

    def api_disabled(self, service: str) -> Finding:
        name = API_NAMES.get(service, service)
        return blocker(
            "api",
            f"the {name} ({service}) is not enabled in project {self.project}",
            f"`gcloud services enable {service} --project {self.project}` (needs `gcloud auth login` and "
            f"a billing account linked to the project)",
        )

    def billing(self, detail: str) -> Finding:
        return blocker(
            "billing",
            f"project {self.project} has no billing account linked ({detail})",
            f"link one at https://console.cloud.google.com/billing/linkedaccount?project={self.project}",
        )


def _connect(project: str | None) -> GcpApi:
    """Sign in as Pulumi's GCP provider would: the stack's `gcp:credentials` key, else ADC."""
    import pulumi

    return GcpApi.connect(project, key=pulumi.Config("gcp").get("credentials"))


def _unreachable(exc: GcpApiError) -> Finding:
    """Not signed in, or no network: nothing else can be checked."""
    return blocker("network" if isinstance(exc, Offline) else "credentials", str(exc))


def check(ctx: CheckContext, connect: Callable[[str | None], GcpApi] | None = None) -> CloudResult:
    providers = ctx.settings.providers
    result = CloudResult(zone_key=ZONE_KEY, zone=providers.gcp_zone)
    try:
        api = (connect or _connect)(providers.gcp_project)
    except (NotLoggedIn, Offline) as exc:
        return CloudResult([_unreachable(exc)], ZONE_KEY, providers.gcp_zone, stopped=True)
    except GcpApiError:
        return CloudResult(
            [
                blocker(
                    "project",
                    "no GCP project: gcp:project is not set (nor GOOGLE_CLOUD_PROJECT)",
                    ctx.config_set("gcp:project", "YOUR-PROJECT-ID"),
                )
            ],
            ZONE_KEY,
            providers.gcp_zone,
            stopped=True,
        )
    gcp = _Gcp(ctx, api)
    gcp.findings.append(ok("credentials", f"signed in to Google Cloud; project {api.project}"))
    try:
        _apis(gcp)
        try:
            region = gcp.guarded(f"region {providers.gcp_region}", lambda: api.region(providers.gcp_region))
        except NotFound:
            raise Stop(
                blocker(
                    "zone",
                    f"gcp:zone {providers.gcp_zone}: there is no region {providers.gcp_region} "
                    "(`gcloud compute zones list` lists the zones)",
                    ctx.config_set(ZONE_KEY, "us-central1-b"),
                )
            ) from None
        if region is not None:
            _zone_in_region(gcp, region.zones)
            _quotas(gcp, region.quotas)
        result.zones = _zones(gcp, region.zones if region else [])
        _image(gcp)
    except Stop as stop:
        gcp.findings.append(stop.finding)
        result.stopped = stop.finding.topic in {"credentials", "network"}
    result.findings = gcp.findings
    return result


# --------------------------------------------------------------------- APIs


def _apis(gcp: _Gcp) -> None:
    needed = [COMPUTE_API] + ([STORAGE_API] if gcp.ctx.settings.stack.behind_load_balancer else [])
    for service in needed:
        try:
            enabled = gcp.api.service_enabled(service)
        except (PermissionDenied, ApiDisabled, NotFound):
            continue  # Service Usage unreadable here: the Compute Engine calls below will tell
        except (NotLoggedIn, Offline) as exc:
            raise Stop(_unreachable(exc)) from None
        except BillingDisabled as exc:
            raise Stop(gcp.billing(str(exc))) from None
        if not enabled:
            if service == COMPUTE_API:
                raise Stop(gcp.api_disabled(service))
            gcp.findings.append(gcp.api_disabled(service))


# --------------------------------------------------------------------- quotas


def _instances(gcp: _Gcp) -> int:
    stack = gcp.ctx.settings.stack
    return stack.replica_range[1] if stack.behind_load_balancer else 1


def _gpu_needed(gcp: _Gcp) -> tuple[str, int] | None:
    """(accelerator type, GPUs the stack runs at most); None: a stack without a GPU."""
    stack = gcp.ctx.settings.stack
    accelerator = ACCELERATOR_TYPES.get(stack.gpu)
    if accelerator is None:
        return None
    return accelerator, stack.gpu_count * _instances(gcp)


def _quotas(gcp: _Gcp, region_quotas: dict[str, Quota]) -> None:
    ctx = gcp.ctx
    stack, region = ctx.settings.stack, ctx.settings.providers.gcp_region
    project_quotas = gcp.guarded("the project's quotas", gcp.api.project_quotas) or {}
    needed = _gpu_needed(gcp)
    if needed is None:
        if stack.gpu != NO_GPU:
            gcp.findings.append(
                blocker(
                    "gpu",
                    f"synthdet:gpu {stack.gpu!r} has no Compute Engine accelerator here "
                    f"(known: {', '.join(sorted(ACCELERATOR_TYPES))})",
                    ctx.config_set("synthdet:gpu", "t4"),
                )
            )
    else:
        accelerator, gpus = needed
        metric = gpu_quota_metric(accelerator)
        if stack.spot:
            spot_metric = gpu_quota_metric(accelerator, spot=True)
            # Spot VMs use the preemptible GPU quota when the project has one, else the standard one.
            if region_quotas.get(spot_metric, Quota(spot_metric, 0, 0)).limit > 0:
                metric = spot_metric
        gpu_quota = _Need("GPU", f"the stack's {accelerator}", ctx.cpu_stack_hint())
        _against(gcp, region_quotas.get(metric), metric, gpus, region, gpu_quota)
        everywhere = _Need("GPU", "GPUs in all regions", ctx.cpu_stack_hint(), free_trial=True)
        _against(gcp, project_quotas.get("GPUS_ALL_REGIONS"), "GPUS_ALL_REGIONS", gpus, None, everywhere)
    _cpus(gcp, region_quotas, project_quotas)
    if not stack.behind_load_balancer:
        for metric_name, count in HOST_NETWORK_NEEDS.items():
            _headroom(gcp, project_quotas.get(metric_name), metric_name, count, None)
        for metric_name, count in HOST_REGION_NEEDS.items():
            _headroom(gcp, region_quotas.get(metric_name), metric_name, count, region)


def cpu_quota_metric(machine_type: str, region_quotas: dict[str, Quota], *, spot: bool = False) -> str:
    """n2-standard-8 -> N2_CPUS where the region lists it; else CPUS (N1, E2 ... share it).
    Spot: PREEMPTIBLE_CPUS where the project has some, else the standard metric."""
    series = machine_type.split("-", 1)[0].upper()
    metric = f"{series}_CPUS" if f"{series}_CPUS" in region_quotas else "CPUS"
    if spot and region_quotas.get("PREEMPTIBLE_CPUS", Quota("PREEMPTIBLE_CPUS", 0, 0)).limit > 0:
        return "PREEMPTIBLE_CPUS"
    return metric


def _cpus(gcp: _Gcp, region_quotas: dict[str, Quota], project_quotas: dict[str, Quota]) -> None:
    """vCPU quota: the machine type's series in the region, and CPUS_ALL_REGIONS."""
    ctx = gcp.ctx
    stack, zone, region = (
        ctx.settings.stack,
        ctx.settings.providers.gcp_zone,
        ctx.settings.providers.gcp_region,
    )
    machine = stack.resolved_machine_type()
    try:
        cpus = gcp.guarded(f"the vCPUs of {machine}", lambda: gcp.api.machine_type_cpus(zone, machine))
    except NotFound:
        return  # not offered in the zone: the zone check says so
    if cpus is None:
        return
    need = cpus * _instances(gcp)
    metric = cpu_quota_metric(machine, region_quotas, spot=stack.spot)
    what = _Need("CPU", f"{_instances(gcp)} x {machine}, {cpus} vCPUs each")
    _against(gcp, region_quotas.get(metric), metric, need, region, what)
    if "CPUS_ALL_REGIONS" in project_quotas:
        _against(gcp, project_quotas["CPUS_ALL_REGIONS"], "CPUS_ALL_REGIONS", need, None, what)


@dataclass(frozen=True)
class _Need:
    kind: str  # GPU or CPU
    what: str
    hint: str = ""  # appended to the fix of a zero quota
    free_trial: bool = False


def _where(gcp: _Gcp, region: str | None) -> str:
    """Where a quota applies: a region's, or the project's (region None)."""
    return f"in {region}" if region else f"in project {gcp.project}"


def _against(
    gcp: _Gcp, quota: Quota | None, metric: str, need: int, region: str | None, need_of: _Need
) -> None:
    project, where = gcp.project, _where(gcp, region)
    kind, what = need_of.kind, need_of.what
    if quota is None:
        gcp.findings.append(warning("quota", f"no {metric} quota listed {where}: cannot check it"))
        return
    if quota.limit < need:
        trial = (
            " (free-trial accounts get no GPUs at all: upgrade to a paid account first, "
            "https://console.cloud.google.com/billing)"
            if need_of.free_trial and quota.limit == 0
            else ""
        )
        gcp.findings.append(
            blocker(
                "quota",
                f"{kind} quota {metric} {where} is {quota.limit:g}, the stack needs {need} ({what}){trial}",
                quota_request(project, metric, need, region) + need_of.hint,
            )
        )
    elif quota.free < need:
        gcp.findings.append(
            blocker(
                "quota",
                f"{kind} quota {metric} {where}: {quota.usage:g} of {quota.limit:g} in use, the stack needs "
                f"{need} more ({what})",
                f"stop VMs you do not need (`gcloud compute instances list --project {project}`) or "
                + quota_request(project, metric, quota.usage + need, region),
                headroom=True,
            )
        )
    else:
        gcp.findings.append(
            ok("quota", f"{metric} {where}: {quota.free:g} of {quota.limit:g} free, {need} needed")
        )


def _headroom(gcp: _Gcp, quota: Quota | None, metric: str, need: int, region: str | None) -> None:
    if quota is None or quota.free >= need:
        return
    project, where = gcp.project, _where(gcp, region)
    listing = {
        "NETWORKS": f"gcloud compute networks list --project {project}",
        "FIREWALLS": f"gcloud compute firewall-rules list --project {project}",
        "STATIC_ADDRESSES": f"gcloud compute addresses list --project {project}",
    }.get(metric, f"gcloud compute project-info describe --project {project}")
    gcp.findings.append(
        blocker(
            "quota",
            f"{metric} quota {where} is full ({quota.usage:g} of {quota.limit:g} in use); "
            f"the stack creates {need}",
            f"delete ones you do not use (`{listing}`) or "
            + quota_request(project, metric, quota.usage + need, region),
            headroom=True,
        )
    )


# --------------------------------------------------------------------- zones


def _zone_in_region(gcp: _Gcp, zones: list[str]) -> None:
    zone = gcp.ctx.settings.providers.gcp_zone
    if zone not in zones:
        raise Stop(
            blocker(
                "zone",
                f"gcp:zone {zone} is not a zone of {gcp.ctx.settings.providers.gcp_region} "
                f"(its zones: {', '.join(zones) or 'none'})",
                gcp.ctx.config_set(ZONE_KEY, zones[0] if zones else "us-central1-b"),
            )
        )


def _zones(gcp: _Gcp, region_zones: list[str]) -> list[str]:
    """Check the zone offers GPU and machine type; return the region's zones that do, configured first."""
    ctx = gcp.ctx
    stack, zone = ctx.settings.stack, ctx.settings.providers.gcp_zone
    machine = stack.resolved_machine_type()
    needed = _gpu_needed(gcp)
    machine_zones = gcp.guarded(f"zones offering {machine}", lambda: gcp.api.machine_type_zones(machine))
    gpu_zones: set[str] | None = None
    if needed is not None:
        accelerator = needed[0]
        gpu_zones = gcp.guarded(
            f"zones offering {accelerator}", lambda: gcp.api.accelerator_zones(accelerator)
        )
    if machine_zones is None or (needed is not None and gpu_zones is None):
        return [zone]
    offering = machine_zones & gpu_zones if gpu_zones is not None else machine_zones
    what = f"{needed[0]} with {machine}" if needed else machine
    in_region = [z for z in region_zones if z in offering]
    wanted = list(stack.replica_zones) if stack.behind_load_balancer and stack.replica_zones else [zone]
    for missing in [z for z in wanted if z not in offering]:
        key = "synthdet:replicaZones" if missing != zone else ZONE_KEY
        if in_region:
            alternatives = [z for z in in_region if z not in wanted] or in_region
            fix = (
                ctx.config_set(ZONE_KEY, alternatives[0])
                if key == ZONE_KEY
                else f"set synthdet:replicaZones to zones of {_region(zone)} that offer it: "
                + ", ".join(in_region)
            )
            gcp.findings.append(
                blocker(
                    "zone",
                    f"{missing} ({key}) does not offer {what}; zones of {_region(zone)} that do: "
                    f"{', '.join(in_region)}",
                    fix,
                )
            )
        else:
            elsewhere = sorted(offering)[:6]
            gcp.findings.append(
                blocker(
                    "zone",
                    f"no zone of {_region(zone)} offers {what}; zones elsewhere that do: "
                    f"{', '.join(elsewhere) or 'none found'}",
                    ctx.config_set(ZONE_KEY, elsewhere[0])
                    if elsewhere
                    else "pick another machine type or GPU",
                )
            )
    if zone in offering:
        others = [z for z in in_region if z != zone]
        gcp.findings.append(
            ok(
                "zone",
                f"{zone} offers {what}; other zones of {_region(zone)} that do: "
                f"{', '.join(others) or 'none'} "
                f"(on a stockout `synthdet up --stack {ctx.stack_name}` moves there, or "
                f"`{ctx.config_set(ZONE_KEY, others[0] if others else zone)}`)",
            )
        )
        return [zone, *others]
    return in_region


def _region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


# --------------------------------------------------------------------- image


def _image(gcp: _Gcp) -> None:
    """The boot image the host (and every replica: same image) starts from must resolve."""
    ctx = gcp.ctx
    stack = ctx.settings.stack
    who = "the replicas" if stack.behind_load_balancer else "the host"
    if stack.image:
        match = IMAGE_REFERENCE.match(stack.image)
        if match is None:
            gcp.findings.append(
                warning(
                    "image", f"synthdet:image {stack.image!r} not checked (use projects/P/global/images/...)"
                )
            )
            return
        project, family, name = match["project"], match["family"], match["name"]
    else:
        try:
            choice = select_image("gcp", stack.gpu)
        except ValueError as exc:
            gcp.findings.append(blocker("image", str(exc)))
            return
        project, family, name = choice.gcp_project or GCP_IMAGE_PROJECT, choice.gcp_family, None
    what = f"image family {family}" if family else f"image {name}"
    try:
        found: ImageInfo | None = gcp.guarded(
            what,
            (lambda: gcp.api.image_from_family(project, family))
            if family
            else (lambda: gcp.api.image(project, name or "")),
        )
    except Stop:
        raise
    except NotFound:
        prefix = re.split(r"-\d", family or name or "", maxsplit=1)[0]
        gcp.findings.append(
            blocker(
                "image",
                f"{what} in project {project} was not found (renamed or retired?): {who} cannot boot",
                f"pick a current one (`gcloud compute images list --project {project} --no-standard-images "
                f"--filter='family~^{prefix}' --format='value(family)' | sort -u`), then "
                + ctx.config_set("synthdet:image", f"projects/{project}/global/images/family/FAMILY"),
            )
        )
        return
    if found is None:
        return
    if found.deprecated:
        gcp.findings.append(
            warning("image", f"{what}: image {found.name} is {found.deprecated} (newer ones may exist)")
        )
    else:
        gcp.findings.append(ok("image", f"{what} in {project} resolves to {found.name} for {who}"))
