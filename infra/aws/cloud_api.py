"""AWS's own APIs, read directly (not through Pulumi): identity, quotas, offerings, AMIs, instances.

Used by the pre-flight check (`synthdet check`, and the program at preview)
and meant for anything else that must ask EC2 a question outside a Pulumi run
(start a stopped instance, read its state). It imports nothing else of the
project, so any side can use it.

- Credentials and region: boto3's usual chain (environment, `aws configure`
  profiles, AWS_PROFILE, SSO, the instance role).
- Every call is bounded: short connect/read timeouts and at most two attempts.
- Endpoints move the standard way: AWS_ENDPOINT_URL (every service) or
  AWS_ENDPOINT_URL_EC2 / _STS / _SERVICE_QUOTAS, which botocore reads itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
MAX_ATTEMPTS = 2

T = TypeVar("T")

# Error codes that mean "who you are is not accepted" (vs. "you may not do this").
_LOGIN_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
}
_PERMISSION_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "OptInRequired"}
_NOT_FOUND_CODES = {
    "NoSuchResourceException",
    "InvalidInstanceType",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Malformed",
    "InvalidInstanceID.NotFound",
    "InvalidInstanceID.Malformed",
}


class AwsApiError(Exception):
    """A call failed; the message is one line a user can act on."""


class NotLoggedIn(AwsApiError):
    pass


class Offline(AwsApiError):
    pass


class PermissionDenied(AwsApiError):
    pass


class NotFound(AwsApiError):
    pass


@dataclass(frozen=True)
class Identity:
    account: str
    arn: str


@dataclass(frozen=True)
class QuotaValue:
    code: str
    name: str
    value: float


@dataclass(frozen=True)
class AmiInfo:
    image_id: str
    name: str
    created: str
    deprecated: bool


@dataclass(frozen=True)
class InstanceState:
    instance_id: str
    state: str  # pending, running, stopping, stopped, shutting-down, terminated
    zone: str


def client_config() -> Any:
    from botocore.config import Config

    return Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def translate(exc: BaseException, what: str) -> AwsApiError:
    """A botocore exception as one of ours, with a one-line message."""
    from botocore import exceptions as aws_errors

    if isinstance(exc, AwsApiError):
        return exc
    if isinstance(exc, (aws_errors.NoCredentialsError, aws_errors.PartialCredentialsError)):
        return NotLoggedIn(
            f"{what}: no AWS credentials found: run `aws configure` (or set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if isinstance(exc, aws_errors.NoRegionError):
        return AwsApiError(f"{what}: no AWS region: set aws:region in the stack")
    if isinstance(exc, (aws_errors.EndpointConnectionError, aws_errors.ConnectTimeoutError)):
        return Offline(f"{what}: cannot reach AWS (offline?): {_first_line(str(exc))}")
    if isinstance(exc, aws_errors.ReadTimeoutError):
        return Offline(f"{what}: AWS did not answer in time: {_first_line(str(exc))}")
    if isinstance(exc, aws_errors.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), _first_line(str(error.get("Message", "")))
        if code in _LOGIN_CODES:
            return NotLoggedIn(f"{what}: AWS refused the credentials ({code}: {message})")
        if code in _PERMISSION_CODES:
            return PermissionDenied(f"{what}: not allowed ({code}: {message})")
        if code in _NOT_FOUND_CODES:
            return NotFound(f"{what}: {code}: {message}")
        return AwsApiError(f"{what}: {code}: {message}")
    if isinstance(exc, aws_errors.BotoCoreError):
        return AwsApiError(f"{what}: {_first_line(str(exc))}")
    return AwsApiError(f"{what}: {type(exc).__name__}: {_first_line(str(exc))}")


class AwsApi:
    """The few STS, Service Quotas and EC2 calls the project needs, in one region, each bounded."""

    def __init__(self, region: str, session: Any = None, profile: str | None = None) -> None:
        """`profile`: a named profile (the stack's `aws:profile`, as Pulumi's provider uses it)."""
        import boto3
        from botocore.exceptions import ProfileNotFound

        self.region = region
        try:
            self.session = session or boto3.session.Session(region_name=region, profile_name=profile or None)
        except ProfileNotFound:
            raise NotLoggedIn(
                f"AWS profile {profile!r} (aws:profile) is not configured: "
                f"`aws configure --profile {profile}`"
            ) from None
        self._clients: dict[str, Any] = {}

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, region_name=self.region, config=client_config()
            )
        return self._clients[service]

    def _call(self, what: str, function: Callable[..., T], **kwargs: Any) -> T:
        try:
            return function(**kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line of ours
            raise translate(exc, what) from None

    def identity(self) -> Identity:
        found = self._call("AWS STS (who am I)", self._client("sts").get_caller_identity)
        return Identity(account=str(found.get("Account", "")), arn=str(found.get("Arn", "")))

    def quota(self, service_code: str, quota_code: str) -> QuotaValue:
        """The applied value of a quota, or AWS's default where none was ever applied."""
        client = self._client("service-quotas")
        what = f"Service Quotas ({service_code} {quota_code} in {self.region})"
        try:
            found = self._call(what, client.get_service_quota, ServiceCode=service_code, QuotaCode=quota_code)
        except NotFound:
            found = self._call(
                what, client.get_aws_default_service_quota, ServiceCode=service_code, QuotaCode=quota_code
            )
        quota = found.get("Quota", {})
        return QuotaValue(
            code=quota_code,
            name=str(quota.get("QuotaName", quota_code)),
            value=float(quota.get("Value", 0.0)),
        )

    def instance_type_vcpus(self, instance_type: str) -> int | None:
        """The type's default vCPUs; None when the region does not know the type."""
        try:
            found = self._call(
                f"EC2 (instance type {instance_type} in {self.region})",
                self._client("ec2").describe_instance_types,
                InstanceTypes=[instance_type],
            )
        except NotFound:
            return None
        types = found.get("InstanceTypes", [])
        return int(types[0]["VCpuInfo"]["DefaultVCpus"]) if types else None

    def offered_zones(self, instance_type: str) -> list[str]:
        """The availability zones of the region that offer this instance type, sorted."""
        found = self._call(
            f"EC2 (zones offering {instance_type} in {self.region})",
            self._client("ec2").describe_instance_type_offerings,
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [instance_type]}],
        )
        return sorted(str(o["Location"]) for o in found.get("InstanceTypeOfferings", []))

    def newest_image(
        self, owners: Sequence[str], filters: Mapping[str, Sequence[str]], include_deprecated: bool = False
    ) -> AmiInfo | None:
        """The most recent AMI matching the filters (None: no match), as `get_ami(most_recent)` picks."""
        found = self._call(
            f"EC2 (AMIs in {self.region})",
            self._client("ec2").describe_images,
            Owners=list(owners),
            Filters=[{"Name": name, "Values": list(values)} for name, values in filters.items()],
            IncludeDeprecated=include_deprecated,
        )
        images = [_ami(i) for i in found.get("Images", [])]
        return max(images, key=lambda i: i.created) if images else None

    def image(self, image_id: str) -> AmiInfo | None:
        try:
            found = self._call(
                f"EC2 (AMI {image_id} in {self.region})",
                self._client("ec2").describe_images,
                ImageIds=[image_id],
                IncludeDeprecated=True,
            )
        except NotFound:
            return None
        images = found.get("Images", [])
        return _ami(images[0]) if images else None

    def default_vpc(self) -> str | None:
        found = self._call(
            f"EC2 (default VPC in {self.region})",
            self._client("ec2").describe_vpcs,
            Filters=[{"Name": "is-default", "Values": ["true"]}],
        )
        vpcs = found.get("Vpcs", [])
        return str(vpcs[0]["VpcId"]) if vpcs else None

    def instance(self, instance_id: str) -> InstanceState:
        found = self._call(
            f"EC2 (instance {instance_id})",
            self._client("ec2").describe_instances,
            InstanceIds=[instance_id],
        )
        for reservation in found.get("Reservations", []):
            for item in reservation.get("Instances", []):
                return InstanceState(
                    instance_id=str(item["InstanceId"]),
                    state=str(item.get("State", {}).get("Name", "")),
                    zone=str(item.get("Placement", {}).get("AvailabilityZone", "")),
                )
        raise NotFound(f"EC2 (instance {instance_id}): no such instance in {self.region}")

    def start_instance(self, instance_id: str) -> None:
        """Ask for a stopped instance to start (returns once accepted, not when it runs)."""
        self._call(
            f"EC2 (start {instance_id})", self._client("ec2").start_instances, InstanceIds=[instance_id]
        )


def _ami(item: Mapping[str, Any]) -> AmiInfo:
    return AmiInfo(
        image_id=str(item.get("ImageId", "")),
        name=str(item.get("Name", "")),
        created=str(item.get("CreationDate", "")),
        # ISO 8601 UTC on both sides: the strings compare as the times do.
        deprecated=bool(item.get("DeprecationTime")) and str(item["DeprecationTime"])[:19] <= _now_iso(),
    )


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
