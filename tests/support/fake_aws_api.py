"""A fake AWS on loopback: STS, Service Quotas and EC2, over real HTTP, for boto3.

It answers what infra/aws/cloud_api.py asks, in the wire formats the public
API references document:
- STS GetCallerIdentity and EC2 (DescribeInstanceTypes,
  DescribeInstanceTypeOfferings, DescribeImages, DescribeVpcs,
  DescribeInstances, StartInstances): the Query protocol (a form POST), XML
  answers (`DescribeInstanceTypeOfferingsResponse` / `instanceTypeOfferingSet`
  / `item` ...), errors as `<Response><Errors><Error>` (EC2) or
  `<ErrorResponse><Error>` (STS);
- Service Quotas: JSON 1.1 with `X-Amz-Target: ServiceQuotasV20190624.GetServiceQuota`,
  errors as `{"__type": ..., "message": ...}`.

An `AwsWorld` says what the account looks like; tests change it to play one
failure. Point boto3 at it with AWS_ENDPOINT_URL=<url> (and any fake keys).
"""

from __future__ import annotations

import fnmatch
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from tests.support.loopback import reply, serve_http

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
T4_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261001"
M60_AMI_NAME = "Deep Learning Base Proprietary Nvidia Driver GPU AMI (Ubuntu 20.04) 20250101"
QUOTA_NAMES = {
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-1216C47A": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    "L-34B43A08": "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
}


@dataclass
class Ami:
    image_id: str
    name: str
    created: str
    owner_alias: str = "amazon"
    architecture: str = "x86_64"
    state: str = "available"
    deprecation: str = ""  # ISO time; set and past: hidden unless IncludeDeprecated


@dataclass
class AwsWorld:
    """One account in one region as the fake shows it; every field is plain data a test may change."""

    account: str = "123456789012"
    arn: str = "arn:aws:iam::123456789012:user/deployer"
    credentials_valid: bool = True
    # quota code -> applied value (absent: only AWS's default, below)
    quotas: dict[str, float] = field(default_factory=lambda: {"L-DB2E81BA": 8.0, "L-3819A6DF": 8.0})
    default_quotas: dict[str, float] = field(
        default_factory=lambda: {code: 0.0 for code in QUOTA_NAMES} | {"L-1216C47A": 5.0}
    )
    # instance type -> vCPUs
    instance_types: dict[str, int] = field(
        default_factory=lambda: {"g4dn.xlarge": 4, "g3s.xlarge": 4, "c7i.2xlarge": 8}
    )
    # instance type -> availability zones offering it
    offerings: dict[str, list[str]] = field(
        default_factory=lambda: {
            "g4dn.xlarge": ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"],
            "g3s.xlarge": ["us-east-1a", "us-east-1b", "us-east-1d"],
            "c7i.2xlarge": ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"],
        }
    )
    images: list[Ami] = field(
        default_factory=lambda: [
            Ami(
                "ami-0t4000000000000001",
                T4_AMI_NAME.replace("20261001", "20260901"),
                "2026-09-01T00:00:00.000Z",
            ),
            Ami("ami-0t4000000000000002", T4_AMI_NAME, "2026-10-01T00:00:00.000Z"),
            Ami(
                "ami-0m6000000000000001",
                M60_AMI_NAME,
                "2025-01-01T00:00:00.000Z",
                deprecation="2025-06-01T00:00:00.000Z",
            ),
        ]
    )
    default_vpc: str | None = "vpc-0default000000001"
    # instance id -> (state, zone)
    instances: dict[str, tuple[str, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ the usual failures
    def without_gpu_quota(self) -> AwsWorld:
        """A new account: no applied G and VT quota, AWS's default of 0 vCPUs."""
        self.quotas.pop("L-DB2E81BA", None)
        self.quotas.pop("L-3819A6DF", None)
        return self

    def without_type_in(self, zone: str, instance_type: str = "g4dn.xlarge") -> AwsWorld:
        self.offerings[instance_type] = [z for z in self.offerings.get(instance_type, []) if z != zone]
        return self

    def without_images(self) -> AwsWorld:
        self.images.clear()
        return self

    def with_bad_credentials(self) -> AwsWorld:
        self.credentials_valid = False
        return self


class _Handler(BaseHTTPRequestHandler):
    world: AwsWorld
    lock: threading.Lock

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target")
        if target:
            self._json_protocol(target, json.loads(body or b"{}"))
            return
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        action = form.get("Action", "")
        with self.lock:
            self.world.requests.append(action)
        if action == "GetCallerIdentity":
            self._sts(form)
        else:
            self._ec2(action, form)

    # ------------------------------------------------------------ STS (Query, XML)
    def _sts(self, form: dict[str, str]) -> None:
        world = self.world
        if not world.credentials_valid:
            self._xml(
                f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code>'
                "<Message>The security token included in the request is invalid.</Message></Error>"
                "<RequestId>00000000-0000-0000-0000-000000000001</RequestId></ErrorResponse>",
                status=403,
            )
            return
        self._xml(
            f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult>'
            f"<Arn>{escape(world.arn)}</Arn><UserId>AIDAEXAMPLEUSERID0001</UserId><Account>{world.account}</Account>"
            "</GetCallerIdentityResult><ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000002"
            "</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
        )

    # ------------------------------------------------------------ Service Quotas (JSON 1.1)
    def _json_protocol(self, target: str, body: dict[str, Any]) -> None:
        world = self.world
        operation = target.split(".", 1)[-1]
        with self.lock:
            world.requests.append(operation)
        if not world.credentials_valid:
            self._json(
                {
                    "__type": "UnrecognizedClientException",
                    "message": "The security token included in the request is invalid.",
                },
                status=400,
            )
            return
        code = str(body.get("QuotaCode", ""))
        if operation == "GetServiceQuota":
            value = world.quotas.get(code)
        elif operation == "GetAWSDefaultServiceQuota":
            value = world.default_quotas.get(code)
        else:
            self._json({"__type": "InvalidAction", "message": f"unknown operation {operation}"}, status=400)
            return
        if value is None:
            self._json(
                {
                    "__type": "NoSuchResourceException",
                    "message": f"The request failed because the quota {code} does not exist.",
                },
                status=400,
            )
            return
        self._json(
            {
                "Quota": {
                    "ServiceCode": "ec2",
                    "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                    "QuotaArn": f"arn:aws:servicequotas:us-east-1:{world.account}:ec2/{code}",
                    "QuotaCode": code,
                    "QuotaName": QUOTA_NAMES.get(code, code),
                    "Value": value,
                    "Unit": "None",
                    "Adjustable": True,
                    "GlobalQuota": False,
                }
            }
        )

    # ------------------------------------------------------------ EC2 (Query, XML)
    def _ec2(self, action: str, form: dict[str, str]) -> None:
        world = self.world
        if not world.credentials_valid:
            self._ec2_error(
                401, "AuthFailure", "AWS was not able to validate the provided access credentials"
            )
            return
        handler = {
            "DescribeInstanceTypes": self._instance_types,
            "DescribeInstanceTypeOfferings": self._offerings,
            "DescribeImages": self._images,
            "DescribeVpcs": self._vpcs,
            "DescribeInstances": self._instances,
            "StartInstances": self._start,
        }.get(action)
        if handler is None:
            self._ec2_error(400, "InvalidAction", f"The action {action} is not valid for this web service.")
            return
        handler(form)

    def _instance_types(self, form: dict[str, str]) -> None:
        wanted = _members(form, "InstanceType")
        unknown = [t for t in wanted if t not in self.world.instance_types]
        if unknown:
            self._ec2_error(
                400,
                "InvalidInstanceType",
                f"The following supplied instance types do not exist: [{', '.join(unknown)}]",
            )
            return
        items = "".join(
            f"<item><instanceType>{t}</instanceType><vCpuInfo><defaultVCpus>{self.world.instance_types[t]}"
            "</defaultVCpus><defaultCores>2</defaultCores><defaultThreadsPerCore>2</defaultThreadsPerCore>"
            "</vCpuInfo></item>"
            for t in wanted
        )
        self._ec2_ok("DescribeInstanceTypesResponse", f"<instanceTypeSet>{items}</instanceTypeSet>")

    def _offerings(self, form: dict[str, str]) -> None:
        filters = _filters(form)
        types = filters.get("instance-type") or list(self.world.offerings)
        items = "".join(
            f"<item><instanceType>{t}</instanceType><locationType>availability-zone</locationType>"
            f"<location>{zone}</location></item>"
            for t in types
            for zone in self.world.offerings.get(t, [])
        )
        self._ec2_ok(
            "DescribeInstanceTypeOfferingsResponse",
            f"<instanceTypeOfferingSet>{items}</instanceTypeOfferingSet>",
        )

    def _images(self, form: dict[str, str]) -> None:
        filters, ids, owners = _filters(form), _members(form, "ImageId"), _members(form, "Owner")
        include_deprecated = form.get("IncludeDeprecated", "false").lower() == "true"
        if ids and not any(i.image_id in ids for i in self.world.images):
            self._ec2_error(400, "InvalidAMIID.NotFound", f"The image id '[{', '.join(ids)}]' does not exist")
            return
        found = [
            image
            for image in self.world.images
            if (not ids or image.image_id in ids)
            and (not owners or image.owner_alias in owners)
            and (include_deprecated or ids or not image.deprecation)
            and all(
                any(fnmatch.fnmatchcase(_image_field(image, name), pattern) for pattern in patterns)
                for name, patterns in filters.items()
            )
        ]
        items = "".join(
            f"<item><imageId>{i.image_id}</imageId><imageLocation>amazon/{escape(i.name)}</imageLocation>"
            f"<imageState>{i.state}</imageState><imageOwnerId>898082745236</imageOwnerId>"
            f"<creationDate>{i.created}</creationDate><isPublic>true</isPublic>"
            f"<architecture>{i.architecture}</architecture><imageType>machine</imageType>"
            f"<name>{escape(i.name)}</name><imageOwnerAlias>{i.owner_alias}</imageOwnerAlias>"
            "<rootDeviceType>ebs</rootDeviceType><virtualizationType>hvm</virtualizationType>"
            + (f"<deprecationTime>{i.deprecation}</deprecationTime>" if i.deprecation else "")
            + "</item>"
            for i in found
        )
        self._ec2_ok("DescribeImagesResponse", f"<imagesSet>{items}</imagesSet>")

    def _vpcs(self, form: dict[str, str]) -> None:
        vpc = self.world.default_vpc
        items = (
            f"<item><vpcId>{vpc}</vpcId><state>available</state><cidrBlock>172.31.0.0/16</cidrBlock>"
            f"<isDefault>true</isDefault><ownerId>{self.world.account}</ownerId></item>"
            if vpc
            else ""
        )
        self._ec2_ok("DescribeVpcsResponse", f"<vpcSet>{items}</vpcSet>")

    def _instances(self, form: dict[str, str]) -> None:
        ids = _members(form, "InstanceId")
        missing = [i for i in ids if i not in self.world.instances]
        if missing:
            self._ec2_error(
                400, "InvalidInstanceID.NotFound", f"The instance ID '{missing[0]}' does not exist"
            )
            return
        items = "".join(
            f"<item><instanceId>{i}</instanceId><instanceState><code>{_STATE_CODES[state]}</code><name>{state}</name>"
            f"</instanceState><placement><availabilityZone>{zone}</availabilityZone></placement></item>"
            for i in ids
            for state, zone in [self.world.instances[i]]
        )
        self._ec2_ok(
            "DescribeInstancesResponse",
            f"<reservationSet><item><reservationId>r-0fake</reservationId><ownerId>{self.world.account}</ownerId>"
            f"<instancesSet>{items}</instancesSet></item></reservationSet>",
        )
        # EC2 starts an instance a while after StartInstances: here it is `pending` for one
        # DescribeInstances, then `running`.
        with self.lock:
            for i in ids:
                state, zone = self.world.instances[i]
                if state == "pending":
                    self.world.instances[i] = ("running", zone)

    def _start(self, form: dict[str, str]) -> None:
        items = ""
        for instance_id in _members(form, "InstanceId"):
            previous, zone = self.world.instances.get(instance_id, ("stopped", ""))
            with self.lock:
                self.world.instances[instance_id] = ("pending", zone)
            items += (
                f"<item><instanceId>{instance_id}</instanceId><currentState><code>0</code><name>pending</name>"
                f"</currentState><previousState><code>{_STATE_CODES[previous]}</code><name>{previous}</name>"
                "</previousState></item>"
            )
        self._ec2_ok("StartInstancesResponse", f"<instancesSet>{items}</instancesSet>")

    # ------------------------------------------------------------ wire helpers
    def _ec2_ok(self, root: str, inner: str) -> None:
        self._xml(
            f'<{root} xmlns="{EC2_NS}"><requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>'
            f"{inner}</{root}>"
        )

    def _ec2_error(self, status: int, code: str, message: str) -> None:
        self._xml(
            f"<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error></Errors>"
            "<RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>",
            status=status,
        )

    def _xml(self, text: str, status: int = 200) -> None:
        data = ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode()
        reply(self, status, "text/xml;charset=UTF-8", data)

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        reply(self, status, "application/x-amz-json-1.1", json.dumps(body).encode())


_STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}


def _members(form: dict[str, str], name: str) -> list[str]:
    """Query-protocol lists: InstanceType.1=..., InstanceType.2=..."""
    found = sorted(
        (int(k.split(".")[1]), v) for k, v in form.items() if k.startswith(f"{name}.") and k.count(".") == 1
    )
    return [v for _, v in found]


def _filters(form: dict[str, str]) -> dict[str, list[str]]:
    """Filter.N.Name / Filter.N.Value.M -> {name: [values]}."""
    filters: dict[str, list[str]] = {}
    for key, name in form.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "Filter" and parts[2] == "Name":
            prefix = f"Filter.{parts[1]}.Value."
            filters[name] = [v for k, v in sorted(form.items()) if k.startswith(prefix)]
    return filters


def _image_field(image: Ami, name: str) -> str:
    return {"name": image.name, "architecture": image.architecture, "state": image.state}.get(name, "")


@contextmanager
def fake_aws_api(world: AwsWorld | None = None) -> Iterator[tuple[str, AwsWorld]]:
    """Serve the fake on 127.0.0.1 (a free port); yield its URL and the world it shows."""
    world = world or AwsWorld()
    handler = type("FakeAwsHandler", (_Handler,), {"world": world, "lock": threading.Lock()})
    with serve_http(handler, poll_interval=0.05) as url:
        yield url, world
