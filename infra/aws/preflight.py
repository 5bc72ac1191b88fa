"""The pre-flight check on AWS (infra/preflight.py runs it; every finding is one line).

In order: credentials and account, the instance type in the region and its
vCPUs, the EC2 vCPU quota of its family (on-demand or spot) against what the
stack needs, the availability zones that offer the type, the AMI, and the
default VPC the host goes into.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from infra.aws.cloud_api import AwsApi, AwsApiError, NotLoggedIn, Offline, PermissionDenied
from infra.images import ami_filters, select_image
from infra.preflight import CheckContext, CloudResult, Finding, Stop, blocker, ok, warning

ZONE_KEY = "synthdet:availabilityZone"
T = TypeVar("T")


@dataclass(frozen=True)
class QuotaFamily:
    """The EC2 vCPU quotas an instance family counts against."""

    name: str
    on_demand: str
    spot: str


# By the letters an instance type starts with (g4dn -> g); anything else: standard.
QUOTA_FAMILIES = {
    "g": QuotaFamily("G and VT", on_demand="L-DB2E81BA", spot="L-3819A6DF"),
    "vt": QuotaFamily("G and VT", on_demand="L-DB2E81BA", spot="L-3819A6DF"),
    "p": QuotaFamily("P", on_demand="L-417A185B", spot="L-7212CCBC"),
}
STANDARD = QuotaFamily("Standard (A, C, D, H, I, M, R, T, Z)", on_demand="L-1216C47A", spot="L-34B43A08")
STANDARD_LETTERS = set("acdhimrtz")


def quota_family(instance_type: str) -> QuotaFamily | None:
    letters = re.match(r"[a-z]+", instance_type)
    prefix = letters.group(0) if letters else ""
    if prefix in QUOTA_FAMILIES:
        return QUOTA_FAMILIES[prefix]
    return STANDARD if prefix[:1] in STANDARD_LETTERS and len(prefix) <= 2 else None


def quota_page(region: str, code: str) -> str:
    return f"https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code}?region={region}"


def check(ctx: CheckContext, api: AwsApi | None = None) -> CloudResult:
    region = ctx.settings.providers.aws_region
    zone = ctx.settings.stack.availability_zone
    result = CloudResult(zone_key=ZONE_KEY, zone=zone, zones=[zone] if zone else [])
    findings = result.findings
    try:
        api = api or AwsApi(region, profile=_provider_setting("profile"))
        identity = _guard(api.identity)
        findings.append(
            ok(
                "credentials",
                f"signed in to AWS account {identity.account} ({identity.arn}); region {region}",
            )
        )
    except NotLoggedIn as exc:
        findings.append(blocker("credentials", str(exc)))
        result.stopped = True
        return result
    except Stop as stop:
        findings.append(stop.finding)
        result.stopped = True
        return result
    try:
        vcpus = _instance_type(ctx, api, findings)
        if vcpus is not None:
            _quota(ctx, api, findings, vcpus)
            result.zones = _zones(ctx, api, findings, zone)
        _image(ctx, api, findings)
        _default_vpc(ctx, api, findings)
    except Stop as stop:
        findings.append(stop.finding)
    return result


def _provider_setting(key: str) -> str | None:
    """A key of Pulumi's AWS provider from the stack (`aws:profile`): the check signs in the same way."""
    import pulumi

    return pulumi.Config("aws").get(key)


def _guard(call: Callable[[], T]) -> T:
    """One look-up; no credentials or no network ends the check (one blocker says why)."""
    try:
        return call()
    except (NotLoggedIn, Offline) as exc:
        raise Stop(blocker("network" if isinstance(exc, Offline) else "credentials", str(exc))) from None


def _instances(ctx: CheckContext) -> int:
    stack = ctx.settings.stack
    return stack.replica_range[1] if stack.behind_load_balancer else 1


def _instance_type(ctx: CheckContext, api: AwsApi, findings: list[Finding]) -> int | None:
    region, machine = ctx.settings.providers.aws_region, ctx.settings.stack.resolved_machine_type()
    try:
        vcpus = _guard(lambda: api.instance_type_vcpus(machine))
    except Stop:
        raise
    except AwsApiError as exc:
        topic = "permission" if isinstance(exc, PermissionDenied) else "machine"
        findings.append(warning(topic, f"cannot check instance type {machine}: {exc}"))
        return None
    if vcpus is None:
        findings.append(
            blocker(
                "machine",
                f"instance type {machine} does not exist in {region}",
                ctx.config_set("synthdet:machineType", "g4dn.xlarge"),
            )
        )
    return vcpus


def _quota(ctx: CheckContext, api: AwsApi, findings: list[Finding], vcpus: int) -> None:
    stack, region = ctx.settings.stack, ctx.settings.providers.aws_region
    machine = stack.resolved_machine_type()
    family = quota_family(machine)
    if family is None:
        findings.append(warning("quota", f"the vCPU quota of {machine}'s family is not checked here"))
        return
    code = family.spot if stack.spot else family.on_demand
    instances = _instances(ctx)
    need = vcpus * instances
    try:
        quota = _guard(lambda: api.quota("ec2", code))
    except Stop:
        raise
    except AwsApiError as exc:
        findings.append(
            warning("quota", f"cannot read EC2 quota {code} ({exc}); check it at {quota_page(region, code)}")
        )
        return
    if quota.value < need:
        findings.append(
            blocker(
                "quota",
                f"EC2 quota '{quota.name}' ({code}) in {region} is {quota.value:g} vCPUs, the stack needs "
                f"{need} ({instances} x {machine}, {vcpus} vCPUs each)",
                f"`aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
                f"--desired-value {need} --region {region}` or {quota_page(region, code)}"
                + ctx.cpu_stack_hint(),
            )
        )
    else:
        findings.append(
            ok(
                "quota",
                f"EC2 quota '{quota.name}' ({code}) in {region}: {quota.value:g} vCPUs, {need} needed",
            )
        )


def _zones(ctx: CheckContext, api: AwsApi, findings: list[Finding], zone: str) -> list[str]:
    """The region's zones offering the type, the configured one first; a blocker if it does not."""
    region, machine = ctx.settings.providers.aws_region, ctx.settings.stack.resolved_machine_type()
    try:
        offered = _guard(lambda: api.offered_zones(machine))
    except Stop:
        raise
    except AwsApiError as exc:
        findings.append(warning("zone", f"cannot list the zones offering {machine}: {exc}"))
        return [zone] if zone else []
    if not offered:
        findings.append(
            blocker(
                "zone",
                f"no availability zone of {region} offers {machine}",
                "use a region that does (`aws ec2 describe-instance-type-offerings --location-type region "
                f"--filters Name=instance-type,Values={machine} --region us-east-1`), then "
                + ctx.config_set("aws:region", "REGION"),
            )
        )
        return []
    if zone and zone not in offered:
        findings.append(
            blocker(
                "zone",
                f"{ZONE_KEY} {zone} does not offer {machine}; "
                f"zones of {region} that do: {', '.join(offered)}",
                ctx.config_set(ZONE_KEY, offered[0]),
            )
        )
        return offered
    placed = f"{zone} offers {machine}" if zone else f"EC2 picks the zone ({ZONE_KEY} is not set)"
    others = [z for z in offered if z != zone]
    move = ctx.config_set(ZONE_KEY, others[0] if others else offered[0])
    findings.append(
        ok(
            "zone",
            f"{placed}; zones of {region} that offer it: {', '.join(offered)} (on a stockout "
            f"`synthdet up --stack {ctx.stack_name}` moves on to the next, or `{move}`)",
        )
    )
    return [zone, *others] if zone else offered


def _image(ctx: CheckContext, api: AwsApi, findings: list[Finding]) -> None:
    """The AMI the host (and every replica: the same look-up) boots must resolve in the region."""
    stack, region = ctx.settings.stack, ctx.settings.providers.aws_region
    who = "the replicas" if stack.behind_load_balancer else "the host"
    try:
        if stack.image:
            found = _guard(lambda: api.image(stack.image))
            if found is None:
                findings.append(
                    blocker(
                        "image",
                        f"synthdet:image {stack.image} is not an AMI in {region}: {who} cannot boot",
                        "unset it (`pulumi config rm synthdet:image --stack "
                        f"{ctx.stack_name}`) or set an AMI id of {region}",
                    )
                )
                return
            what = f"AMI {stack.image}"
        else:
            choice = select_image("aws", stack.gpu)
            found = _guard(
                lambda: api.newest_image(
                    choice.ami_owners, ami_filters(choice), choice.ami_include_deprecated
                )
            )
            what = f"AMI line '{choice.ami_name}'"
            if found is None:
                owners = " ".join(choice.ami_owners)
                findings.append(
                    blocker(
                        "image",
                        f"no AMI named '{choice.ami_name}' owned by {owners} in {region} "
                        "(renamed, retired, or "
                        f"not published here): {who} cannot boot",
                        "find the current line (`aws ec2 describe-images "
                        f"--owners {owners} --region {region} "
                        "--filters 'Name=name,Values=Deep Learning Base*' --query "
                        "'sort_by(Images,&CreationDate)[-5:].[ImageId,Name]' --output text`), then "
                        + ctx.config_set("synthdet:image", "ami-..."),
                    )
                )
                return
    except Stop:
        raise
    except (AwsApiError, ValueError) as exc:
        findings.append(warning("image", f"cannot check the image: {exc}"))
        return
    note = " (deprecated: still launchable)" if found.deprecated else ""
    findings.append(ok("image", f"{what} resolves to {found.image_id} ({found.name}){note} for {who}"))


def _default_vpc(ctx: CheckContext, api: AwsApi, findings: list[Finding]) -> None:
    region = ctx.settings.providers.aws_region
    try:
        vpc = _guard(api.default_vpc)
    except Stop:
        raise
    except AwsApiError as exc:
        findings.append(warning("network", f"cannot check the default VPC: {exc}"))
        return
    if vpc is None:
        findings.append(
            blocker(
                "network",
                f"no default VPC in {region} (the stack's instances and security group go there)",
                f"`aws ec2 create-default-vpc --region {region}`",
            )
        )
    else:
        findings.append(ok("network", f"default VPC {vpc} in {region}"))
