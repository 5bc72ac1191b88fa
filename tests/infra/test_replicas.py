"""Scale-out under mocks: `replicas: 3` behind each cloud's own load balancer.

Policy asserted on the resource graph: the cloud's machinery (template, group,
health check, balancer, certificate) is there and wired; only the balancer may
reach the instances and only on the instance port; the balancer forwards every
path and knows no secret (nginx on the instances checks it); health checks use a
path without the secret; connections drain; each instance gets a startup script (no secret
in it) that fetches from a private bucket the stack fills; the URL secret is in no
cloud resource's configuration, only in boot.json's (secret) content; outputs describe
the balancer's URL, secrets stay secret; `replicas: 1` is the single host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

import infra.fleet
from bootstrap.bundle import Artifact, Bundle
from infra.config import ConfigError
from serving.certs import fingerprint_sha256, make_self_signed
from tests.infra import harness
from tests.infra.harness import BOOTSTRAP_TYPE, FAKE_AMI, FAKE_URL_SECRET, ProgramRun, run_program

LB_IP = "198.51.100.80"
ALB_DNS = "synthdet-alb-123456789.us-east-1.elb.amazonaws.com"
GCS_BUCKET = "synthdet-artifacts-bucket-1a2b"
S3_BUCKET = "synthdet-20261125abcdef"
MOCK_CERT_PEM = make_self_signed([LB_IP])[0].decode()
GOOGLE_LB_RANGES = ["130.211.0.0/22", "35.191.0.0/16"]
ANYWHERE = {"0.0.0.0/0", "::/0"}


class FleetMocks(harness.GraphMocks):
    """The harness's mocks plus what the scale-out resources compute."""

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        computed = {
            "gcp:storage/bucket:Bucket": {"name": GCS_BUCKET, "url": f"gs://{GCS_BUCKET}"},
            "gcp:serviceaccount/account:Account": {
                "email": f"{inputs.get('accountId')}@proj.iam.gserviceaccount.com"
            },
            "gcp:compute/instanceTemplate:InstanceTemplate": {
                "self_link_unique": f"templates/{name}?uniqueId=7"
            },
            "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": {
                "instance_group": f"instanceGroups/{name}"
            },
            "gcp:compute/globalAddress:GlobalAddress": {"address": LB_IP},
            "tls:index/privateKey:PrivateKey": {
                "private_key_pem": "-----BEGIN PRIVATE KEY-----\nMOCK\n-----END PRIVATE KEY-----\n",
                "public_key_openssh": harness.FAKE_PUBLIC_KEY,
                "private_key_openssh": harness.FAKE_PRIVATE_KEY,
            },
            "tls:index/selfSignedCert:SelfSignedCert": {"cert_pem": MOCK_CERT_PEM},
            "aws:s3/bucket:Bucket": {"bucket": S3_BUCKET, "arn": f"arn:aws:s3:::{S3_BUCKET}"},
            "aws:iam/role:Role": {"name": f"{name}-x"},
            "aws:iam/instanceProfile:InstanceProfile": {"arn": f"arn:aws:iam::1:instance-profile/{name}"},
            "aws:ec2/launchTemplate:LaunchTemplate": {"latest_version": 3},
            "aws:lb/loadBalancer:LoadBalancer": {
                "dns_name": ALB_DNS,
                "arn": "arn:alb",
                "arn_suffix": "app/synthdet-alb/50dc6c495c0c9188",
            },
            "aws:lb/targetGroup:TargetGroup": {
                "arn": "arn:tg",
                "arn_suffix": "targetgroup/synthdet-tg/73e2d6bc24d8a067",
            },
            "aws:lb/listener:Listener": {"arn": "arn:listener"},
            "aws:acm/certificate:Certificate": {
                "arn": f"arn:acm:{name}",
                "domain_validation_options": [
                    {
                        "domain_name": inputs.get("domainName"),
                        "resource_record_name": "_x1.synthdet.example.com.",
                        "resource_record_type": "CNAME",
                        "resource_record_value": "_y2.acm-validations.aws.",
                    }
                ]
                if inputs.get("domainName")
                else [],
            },
            "aws:acm/certificateValidation:CertificateValidation": {"certificateArn": "arn:acm:validated"},
            "aws:autoscaling/group:Group": {"name": f"{name}-20261125"},
        }.get(typ)
        return computed if computed is not None else super()._computed(typ, name, inputs)

    def call(self, args):  # type: ignore[override]
        if args.token == "aws:ec2/getVpc:getVpc":
            self.calls.append((args.token, harness.unwrap(args.args)))
            return {"id": "vpc-default", "cidrBlock": "172.31.0.0/16"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            self.calls.append((args.token, harness.unwrap(args.args)))
            return {"ids": ["subnet-a", "subnet-b", "subnet-c"]}
        return super().call(args)


@pytest.fixture(autouse=True)
def fleet_mocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "GraphMocks", FleetMocks)


@pytest.fixture(autouse=True)
def fake_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bundle:
    """Stand-ins for the wheel and archives (the program only uploads them)."""
    wheel = tmp_path / "synthdet_deploy-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    archives = {}
    for name in ("synthdet", "cereal"):
        mar = tmp_path / f"{name}.mar"
        mar.write_bytes(name.encode())
        archives[name] = Artifact(mar, f"{name}-sha".ljust(64, "0"), f"models/{name}/{name}.mar")
    locked = tmp_path / "boot.txt"
    locked.write_text("tenacity==9.2.1 --hash=sha256:" + "cd" * 32 + "\n")
    bundle = Bundle(
        wheel=Artifact(wheel, "ab" * 32, f"wheels/abab/{wheel.name}"),
        boot_requirements=Artifact(locked, "cd" * 32, f"wheels/cdcd/{locked.name}"),
        archives=archives,
    )

    def build(models, serving, cache=None):
        return Bundle(
            wheel=bundle.wheel,
            boot_requirements=bundle.boot_requirements,
            archives={m.name: archives[m.name] for m in models},
        )

    monkeypatch.setattr(infra.fleet, "build_bundle", build)
    return bundle


# What a fleet on an image without torch must name (the GCP T4 image serves its own).
TORCH_PIN = {"synthdet:torchVersion": "2.9.1"}


def fleet_run(stack: str, required, **overrides: Any) -> ProgramRun:
    pin = TORCH_PIN if stack.startswith("aws") else {}
    return run_program(stack, required(stack) | {"synthdet:replicas": 3} | pin | overrides)


def only_object_content(run: ProgramRun, typ: str) -> dict[str, Any]:
    config = [r for r in run.of_type(typ) if r.name.endswith("boot-config")]
    assert len(config) == 1
    assert config[0].is_secret("content")
    return json.loads(config[0].plain("content"))


def check_script(script: str, source: str) -> None:
    assert script.startswith("#!/bin/bash")
    assert f"SOURCE={source}" in script
    assert FAKE_URL_SECRET not in script  # instance metadata / user data is widely readable
    assert 'python" -m bootstrap.boot_local' in script or "-m bootstrap.boot_local" in script
    assert "models/synthdet/synthdet.mar synthdet-sha" in script
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)


# ------------------------------------------------------------------ GCP


def test_gcp_three_replicas_behind_the_global_load_balancer(required):
    run = fleet_run("gcp-t4", required)
    assert not run.of_type(BOOTSTRAP_TYPE)  # nobody deploys over SSH
    assert not run.of_type("gcp:compute/instance:Instance")

    template = run.one("gcp:compute/instanceTemplate:InstanceTemplate")
    assert template.plain("machineType") == "n1-standard-4"
    assert template.plain("guestAccelerators") == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert template.plain("scheduling")["onHostMaintenance"] == "TERMINATE"
    disk = template.plain("disks")[0]
    assert disk["boot"] and disk["diskSizeGb"] == 125
    assert disk["sourceImage"].endswith("/family/pytorch-2-9-cu129-ubuntu-2204-nvidia-580")
    account = run.one("gcp:serviceaccount/account:Account")
    assert template.plain("serviceAccount")["email"].startswith(account.plain("accountId"))
    check_script(template.plain("metadata")["startup-script"], f"gs://{GCS_BUCKET}")
    assert "ssh-keys" not in template.plain("metadata")
    assert template.plain("metadata")["block-project-ssh-keys"] == "TRUE"

    group = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    assert group.plain("targetSize") == 3
    assert group.plain("region") == "us-central1"
    assert group.plain("distributionPolicyZones") == ["us-central1-a"]
    assert group.plain("versions")[0]["instanceTemplate"] == f"templates/{template.name}?uniqueId=7"
    assert group.plain("namedPorts") == [{"name": "https", "port": 443}]
    health = run.one("gcp:compute/healthCheck:HealthCheck")
    assert group.plain("autoHealingPolicies")["healthCheck"] == f"{health.name}-id"
    assert group.plain("autoHealingPolicies")["initialDelaySec"] >= 900
    policy = group.plain("updatePolicy")
    assert policy["maxUnavailableFixed"] == 0 and policy["maxSurgeFixed"] >= 1
    assert not run.of_type("gcp:compute/regionAutoscaler:RegionAutoscaler")

    # Health check on a path without the secret, over the instance's TLS.
    assert health.plain("httpsHealthCheck") == {"port": 443, "requestPath": "/synthdet-health"}

    backend = run.one("gcp:compute/backendService:BackendService")
    assert backend.plain("loadBalancingScheme") == "EXTERNAL_MANAGED"
    assert backend.plain("protocol") == "HTTPS"
    assert backend.plain("portName") == "https"
    assert backend.plain("healthChecks") == f"{health.name}-id"
    assert backend.plain("connectionDrainingTimeoutSec") == 30
    assert backend.plain("backends")[0]["group"] == f"instanceGroups/{group.name}"
    assert backend.plain("backends")[0]["balancingMode"] == "RATE"
    assert backend.plain("logConfig") == {"enable": False}  # logs would hold the secret URL

    # Every path goes to the backends (nginx there checks the secret): no rule, no matcher.
    url_map = run.one("gcp:compute/uRLMap:URLMap")
    assert url_map.plain("defaultService") == f"{backend.name}-id"
    assert not {"hostRules", "pathMatchers", "defaultRouteAction", "tests"} & set(url_map.inputs)

    cert = run.one("gcp:compute/sSLCertificate:SSLCertificate")
    assert cert.is_secret("privateKey")
    assert not run.of_type("gcp:compute/managedSslCertificate:ManagedSslCertificate")
    self_signed = run.one("tls:index/selfSignedCert:SelfSignedCert")
    assert self_signed.plain("ipAddresses") == [LB_IP]
    proxy = run.one("gcp:compute/targetHttpsProxy:TargetHttpsProxy")
    assert proxy.plain("urlMap") == f"{url_map.name}-id"
    assert proxy.plain("sslCertificates") == [f"{cert.name}-id"]
    rule = run.one("gcp:compute/globalForwardingRule:GlobalForwardingRule")
    address = run.one("gcp:compute/globalAddress:GlobalAddress")
    assert rule.plain("target") == f"{proxy.name}-id"
    assert rule.plain("ipAddress") == f"{address.name}-id"
    assert rule.plain("portRange") == "443"
    assert rule.plain("loadBalancingScheme") == "EXTERNAL_MANAGED"


def test_gcp_instances_take_only_the_balancer_on_the_instance_port(required):
    run = fleet_run("gcp-t4", required)
    firewalls = run.of_type("gcp:compute/firewall:Firewall")
    assert len(firewalls) == 1  # no SSH: replicas bootstrap themselves
    fw = firewalls[0]
    assert fw.plain("allows") == [{"protocol": "tcp", "ports": ["443"]}]
    assert fw.plain("sourceRanges") == GOOGLE_LB_RANGES
    template = run.one("gcp:compute/instanceTemplate:InstanceTemplate")
    assert fw.plain("targetTags") == template.plain("tags")
    network = run.one("gcp:compute/network:Network")
    assert fw.plain("network") == template.plain("networkInterfaces")[0]["network"] == f"{network.name}-id"


def test_gcp_bucket_is_private_and_holds_the_bundle_and_the_secret_config(required):
    run = fleet_run("gcp-t4", required)
    bucket = run.one("gcp:storage/bucket:Bucket")
    assert bucket.plain("publicAccessPrevention") == "enforced"
    assert bucket.plain("uniformBucketLevelAccess") is True
    assert bucket.plain("location") == "US-CENTRAL1"
    names = {o.plain("name") for o in run.of_type("gcp:storage/bucketObject:BucketObject")}
    assert {"wheels/abab/synthdet_deploy-0.1.0-py3-none-any.whl", "models/synthdet/synthdet.mar"} <= names
    config = only_object_content(run, "gcp:storage/bucketObject:BucketObject")
    assert config["options"]["url_secret"] == FAKE_URL_SECRET
    assert config["models"] == [
        {"name": "synthdet", "file": "synthdet.mar", "sha256": "synthdet-sha".ljust(64, "0")}
    ]
    assert config["options"]["public_port"] == 443
    # The balancer's certificate is served: no ACME on the instances (synthdet:acme is on).
    assert config["options"]["acme"] is False
    # nginx on each instance trusts X-Forwarded-For from Google's ranges and the LB's address.
    assert config["options"]["balancer_cidrs"] == [*GOOGLE_LB_RANGES, f"{LB_IP}/32"]
    member = run.one("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert member.plain("role") == "roles/storage.objectViewer"
    assert member.plain("bucket") == GCS_BUCKET
    assert member.plain("member").startswith("serviceAccount:")
    # The group waits for the objects and the permission: a first boot finds them.
    group = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    deps = {run.by_urn(u).type for u in group.dependencies}
    assert {"gcp:storage/bucketObject:BucketObject", "gcp:storage/bucketIAMMember:BucketIAMMember"} <= deps


def test_gcp_outputs_describe_the_load_balancer(required):
    run = fleet_run("gcp-t4", required)
    assert run.outputs["endpoint"] == f"https://{LB_IP}/{FAKE_URL_SECRET}/predictions/synthdet"
    assert run.outputs["address"] == LB_IP
    assert run.outputs["load_balancer_url"] == f"https://{LB_IP}"
    group = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    assert run.outputs["group_id"] == f"{group.name}-id"
    assert not {"public_ip", "instance_id"} & set(run.outputs)  # neither is what a fleet has
    assert run.outputs["cert_sha256"] == fingerprint_sha256(MOCK_CERT_PEM.encode())
    assert run.outputs["replicas"] == {"min": 3, "max": 3}
    assert run.outputs["bucket"] == GCS_BUCKET
    per_replica = 0.189999 + 0.35 + 125 * 0.10 / 730 + 0.005
    assert run.outputs["hourly_cost_usd"] == pytest.approx(3 * per_replica + 0.025, abs=1e-3)
    assert {"endpoint", "endpoints", "qr"} <= run.secret_outputs
    assert not any(FAKE_URL_SECRET in line or "\u2580" in line for line in run.logs)  # no QR logged
    for name, value in run.outputs.items():
        if name not in run.secret_outputs:
            assert FAKE_URL_SECRET not in json.dumps(value, default=str), name


def test_gcp_autoscaling_range_and_zones(required):
    run = run_program(
        "gcp-t4",
        required("gcp-t4")
        | {
            "synthdet:replicas": 2,
            "synthdet:maxReplicas": 6,
            "synthdet:requestsPerReplica": 5,
            "synthdet:replicaZones": ["us-central1-a", "us-central1-b"],
        },
    )
    group = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    assert group.plain("targetSize") is None  # the autoscaler sets it
    assert group.plain("distributionPolicyZones") == ["us-central1-a", "us-central1-b"]
    assert group.plain("updatePolicy")["maxSurgeFixed"] == 2  # one per zone (a regional MIG's minimum)
    scaler = run.one("gcp:compute/regionAutoscaler:RegionAutoscaler")
    assert scaler.plain("target") == f"{group.name}-id"
    policy = scaler.plain("autoscalingPolicy")
    assert (policy["minReplicas"], policy["maxReplicas"]) == (2, 6)
    assert policy["loadBalancingUtilization"] == {"target": 0.8}
    backend = run.one("gcp:compute/backendService:BackendService")
    assert backend.plain("backends")[0]["maxRatePerInstance"] == 5
    assert run.outputs["replicas"] == {"min": 2, "max": 6}


def test_gcp_domain_gets_a_managed_certificate(required):
    run = fleet_run("gcp-t4", required, **{"synthdet:domain": "synthdet.example.com"})
    managed = run.one("gcp:compute/managedSslCertificate:ManagedSslCertificate")
    assert managed.plain("managed") == {"domains": ["synthdet.example.com"]}
    assert not run.of_type("gcp:compute/sSLCertificate:SSLCertificate")
    proxy = run.one("gcp:compute/targetHttpsProxy:TargetHttpsProxy")
    assert proxy.plain("sslCertificates") == [f"{managed.name}-id"]
    assert run.outputs["endpoint"] == f"https://synthdet.example.com/{FAKE_URL_SECRET}/predictions/synthdet"
    assert run.outputs["cert_sha256"] is None
    assert run.outputs["dns_records"] == [{"name": "synthdet.example.com", "type": "A", "value": LB_IP}]


def test_gcp_spot_replicas_are_deleted_and_recreated_by_the_group(required):
    run = fleet_run("gcp-t4", required, **{"synthdet:spot": True})
    scheduling = run.one("gcp:compute/instanceTemplate:InstanceTemplate").plain("scheduling")
    assert scheduling["provisioningModel"] == "SPOT"
    assert scheduling["instanceTerminationAction"] == "DELETE"


# ------------------------------------------------------------------ AWS


def test_aws_three_replicas_behind_an_application_load_balancer(required):
    run = fleet_run("aws-t4", required)
    assert not run.of_type(BOOTSTRAP_TYPE)
    assert not run.of_type("aws:ec2/instance:Instance")
    assert not run.of_type("aws:ec2/eip:Eip")

    template = run.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert template.plain("imageId") == FAKE_AMI
    assert template.plain("instanceType") == "g4dn.xlarge"
    assert template.plain("metadataOptions")["httpTokens"] == "required"
    root = template.plain("blockDeviceMappings")[0]
    assert root["deviceName"] == "/dev/sda1"
    assert root["ebs"]["volumeSize"] == 125 and root["ebs"]["encrypted"] == "true"
    profile = run.one("aws:iam/instanceProfile:InstanceProfile")
    assert template.plain("iamInstanceProfile") == {"arn": f"arn:aws:iam::1:instance-profile/{profile.name}"}
    check_script(base64.b64decode(template.plain("userData")).decode(), f"s3://{S3_BUCKET}")
    assert not template.plain("keyName")

    group = run.one("aws:autoscaling/group:Group")
    assert (group.plain("minSize"), group.plain("maxSize"), group.plain("desiredCapacity")) == (3, 3, 3)
    assert group.plain("vpcZoneIdentifiers") == ["subnet-a", "subnet-b", "subnet-c"]
    assert group.plain("launchTemplate") == {"id": f"{template.name}-id", "version": "3"}
    assert group.plain("healthCheckType") == "ELB"
    assert group.plain("healthCheckGracePeriod") >= 900
    assert group.plain("instanceRefresh")["strategy"] == "Rolling"
    target_group = run.one("aws:lb/targetGroup:TargetGroup")
    assert group.plain("targetGroupArns") == ["arn:tg"]
    assert not run.of_type("aws:autoscaling/policy:Policy")

    assert target_group.plain("protocol") == "HTTPS"
    assert target_group.plain("port") == 443
    assert target_group.plain("vpcId") == "vpc-default"
    assert target_group.plain("deregistrationDelay") == 30  # connection draining
    check = target_group.plain("healthCheck")
    assert check["path"] == "/synthdet-health"  # no secret in the balancer's health check
    assert check["protocol"] == "HTTPS" and check["matcher"] == "200"

    alb = run.one("aws:lb/loadBalancer:LoadBalancer")
    assert alb.plain("loadBalancerType") == "application"
    assert alb.plain("internal") is False
    assert alb.plain("subnets") == ["subnet-a", "subnet-b", "subnet-c"]

    listener = run.one("aws:lb/listener:Listener")
    cert = run.one("aws:acm/certificate:Certificate")
    assert listener.plain("loadBalancerArn") == "arn:alb"
    assert listener.plain("protocol") == "HTTPS" and listener.plain("port") == 443
    assert listener.plain("certificateArn") == f"arn:acm:{cert.name}"
    assert listener.plain("sslPolicy").startswith("ELBSecurityPolicy-TLS13")
    # Every path goes to the instances (nginx there checks the secret): no listener rule.
    assert listener.plain("defaultActions") == [{"type": "forward", "targetGroupArn": "arn:tg"}]
    assert not run.of_type("aws:lb/listenerRule:ListenerRule")
    # The self-signed certificate, imported into ACM, names the ALB's DNS name.
    assert cert.is_secret("privateKey")
    assert run.one("tls:index/selfSignedCert:SelfSignedCert").plain("dnsNames") == [ALB_DNS]


def test_aws_instances_take_only_the_balancer_and_nothing_opens_ssh(required):
    run = fleet_run("aws-t4", required)
    groups = {sg.name: sg for sg in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    lb_sg = next(sg for name, sg in groups.items() if name.endswith("lb-sg"))
    replica_sg = next(sg for name, sg in groups.items() if name.endswith("replica-sg"))
    for sg in groups.values():
        assert sg.plain("vpcId") == "vpc-default"
        for rule in sg.plain("ingress"):
            assert rule["fromPort"] == rule["toPort"] == 443  # never 22, never TorchServe's ports
    (lb_rule,) = lb_sg.plain("ingress")
    assert lb_rule["cidrBlocks"] == ["0.0.0.0/0"]
    (replica_rule,) = replica_sg.plain("ingress")
    assert replica_rule["securityGroups"] == [f"{lb_sg.name}-id"]
    assert not replica_rule.get("cidrBlocks")
    assert run.one("aws:lb/loadBalancer:LoadBalancer").plain("securityGroups") == [f"{lb_sg.name}-id"]
    assert run.one("aws:ec2/launchTemplate:LaunchTemplate").plain("vpcSecurityGroupIds") == [
        f"{replica_sg.name}-id"
    ]


def test_aws_endpoint_cidrs_apply_at_the_balancer(required):
    run = fleet_run("aws-t4", required, **{"synthdet:endpointCidrs": ["192.0.2.0/24", "2001:db8::/32"]})
    lb_sg = next(sg for sg in run.of_type("aws:ec2/securityGroup:SecurityGroup") if sg.name.endswith("lb-sg"))
    (rule,) = lb_sg.plain("ingress")
    assert rule["cidrBlocks"] == ["192.0.2.0/24"] and rule["ipv6CidrBlocks"] == ["2001:db8::/32"]


def test_aws_bucket_private_and_readable_by_the_instance_role_only(required):
    run = fleet_run("aws-t4", required)
    block = run.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        block.plain(k)
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    keys = {o.plain("key") for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    assert "models/synthdet/synthdet.mar" in keys
    config = only_object_content(run, "aws:s3/bucketObjectv2:BucketObjectv2")
    assert config["options"]["url_secret"] == FAKE_URL_SECRET
    assert config["options"]["balancer_cidrs"] == ["172.31.0.0/16"]  # the default VPC, where the ALB is
    policy = json.loads(run.one("aws:iam/rolePolicy:RolePolicy").plain("policy"))
    assert policy["Statement"] == [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{S3_BUCKET}/*"]}
    ]
    role = run.one("aws:iam/role:Role")
    assert "ec2.amazonaws.com" in role.plain("assumeRolePolicy")


def test_aws_outputs_describe_the_load_balancer(required):
    run = fleet_run("aws-t4", required)
    assert run.outputs["endpoint"] == f"https://{ALB_DNS}/{FAKE_URL_SECRET}/predictions/synthdet"
    assert run.outputs["address"] == ALB_DNS  # a DNS name: an ALB's IPs change
    group = run.one("aws:autoscaling/group:Group")
    assert run.outputs["group_id"] == f"{group.name}-20261125"
    assert not {"public_ip", "instance_id"} & set(run.outputs)
    assert run.outputs["cert_sha256"] == fingerprint_sha256(MOCK_CERT_PEM.encode())
    per_replica = 0.526 + 125 * 0.08 / 730 + 0.005
    assert run.outputs["hourly_cost_usd"] == pytest.approx(3 * per_replica + 0.0305, abs=1e-3)
    assert {"endpoint", "endpoints"} <= run.secret_outputs


def test_aws_autoscaling_tracks_requests_per_replica(required):
    run = run_program(
        "aws-t4",
        required("aws-t4")
        | TORCH_PIN
        | {"synthdet:replicas": 2, "synthdet:maxReplicas": 8, "synthdet:requestsPerReplica": 6},
    )
    group = run.one("aws:autoscaling/group:Group")
    assert (group.plain("minSize"), group.plain("maxSize"), group.plain("desiredCapacity")) == (2, 8, 2)
    policy = run.one("aws:autoscaling/policy:Policy")
    assert policy.plain("policyType") == "TargetTrackingScaling"
    tracking = policy.plain("targetTrackingConfiguration")
    assert tracking["targetValue"] == 360.0  # per target per minute
    spec = tracking["predefinedMetricSpecification"]
    assert spec["predefinedMetricType"] == "ALBRequestCountPerTarget"
    assert (
        spec["resourceLabel"] == "app/synthdet-alb/50dc6c495c0c9188/targetgroup/synthdet-tg/73e2d6bc24d8a067"
    )
    # The metric exists once the listener routes to the target group: the policy waits for it.
    listener = run.one("aws:lb/listener:Listener")
    assert listener.urn in policy.dependencies


def test_aws_domain_gets_a_dns_validated_certificate(required):
    run = fleet_run("aws-t4", required, **{"synthdet:domain": "synthdet.example.com"})
    cert = run.one("aws:acm/certificate:Certificate")
    assert cert.plain("domainName") == "synthdet.example.com"
    assert cert.plain("validationMethod") == "DNS"
    assert not run.of_type("tls:index/selfSignedCert:SelfSignedCert")
    run.one("aws:acm/certificateValidation:CertificateValidation")
    assert run.one("aws:lb/listener:Listener").plain("certificateArn") == "arn:acm:validated"
    assert run.outputs["endpoint"].startswith("https://synthdet.example.com/")
    assert {"name": "synthdet.example.com", "type": "CNAME", "value": ALB_DNS} in run.outputs["dns_records"]
    assert any(r["value"].endswith("acm-validations.aws.") for r in run.outputs["dns_records"])


def test_extra_models_each_get_an_archive_and_a_url(required, tmp_path):
    other = tmp_path / "other.pth"
    other.write_bytes(b"other")
    run = fleet_run("aws-t4", required, **{"synthdet:extraModels": [f"cereal={other}"]})
    config = only_object_content(run, "aws:s3/bucketObjectv2:BucketObjectv2")
    assert [m["name"] for m in config["models"]] == ["synthdet", "cereal"]
    assert run.outputs["endpoints"]["cereal"] == f"https://{ALB_DNS}/{FAKE_URL_SECRET}/predictions/cereal"


# ------------------------------------------------------------------ where the URL secret may be


def strings_in(value: Any) -> list[str]:
    """Every string in an input, secrets unwrapped (the cloud gets those in plain too), and
    the decoded text of any that is base64 (user data): where a secret could hide."""
    value = harness.unwrap(value)
    if isinstance(value, dict):
        return [t for v in value.values() for t in strings_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in strings_in(v)]
    if not isinstance(value, str):
        return [str(value)] if value is not None else []
    found = [value]
    with contextlib.suppress(ValueError):  # not base64, or not text (UnicodeDecodeError)
        found.append(base64.b64decode(value, validate=True).decode())
    return found


def places_holding_the_secret(run: ProgramRun) -> set[tuple[str, str]]:
    """(resource type, input key) of every resource input that carries the URL secret."""
    return {
        (resource.type, key)
        for resource in run.resources
        for key, value in resource.inputs.items()
        if any(FAKE_URL_SECRET in text for text in strings_in(value))
    }


BOOT_CONFIG = {
    "gcp-t4": ("gcp:storage/bucketObject:BucketObject", "content"),
    "aws-t4": ("aws:s3/bucketObjectv2:BucketObjectv2", "content"),
}


@pytest.mark.parametrize("replicas", [1, 3], ids=["single-host", "fleet"])
@pytest.mark.parametrize("stack", ["gcp-t4", "aws-t4"])
def test_the_url_secret_is_in_no_cloud_resources_configuration(stack, replicas, required):
    """Whatever a cloud resource is given, the cloud stores in plain and shows to anyone who may
    read the project's or account's configuration (and keeps the request in its audit log):
    a Pulumi secret only protects the state. So the secret string may be in two inputs only,
    each a secret: the bootstrap's (our own provider, over SSH) and boot.json's content in the
    private bucket (read by the replicas' own identity). Never in a balancer, health check,
    instance template, metadata, user data, or a plain output."""
    run = fleet_run(stack, required, **{"synthdet:replicas": replicas})
    boot_config = BOOT_CONFIG[stack]
    allowed = {boot_config} if replicas > 1 else {(BOOTSTRAP_TYPE, "url_secret")}
    assert places_holding_the_secret(run) == allowed  # and it is there: the trace can see it
    (holder,) = [
        r
        for r in run.of_type(next(iter(allowed))[0])
        if FAKE_URL_SECRET in json.dumps(harness.unwrap(r.inputs), default=str)
    ]
    assert holder.is_secret(next(iter(allowed))[1])  # encrypted in the state, hidden in the plan
    if replicas > 1:
        assert holder.name.endswith("boot-config")
    for name, value in run.outputs.items():
        if name not in run.secret_outputs:
            assert not any(FAKE_URL_SECRET in text for text in strings_in(value)), name


# ------------------------------------------------------------------ the single host stays


@pytest.mark.parametrize("stack", ["gcp-t4", "aws-t4"])
def test_one_replica_is_the_single_host_path(stack, required):
    run = run_program(stack, required(stack) | {"synthdet:replicas": 1})
    run.one(BOOTSTRAP_TYPE)
    fleet_types = {
        "gcp:compute/instanceTemplate:InstanceTemplate",
        "gcp:compute/uRLMap:URLMap",
        "aws:ec2/launchTemplate:LaunchTemplate",
        "aws:lb/loadBalancer:LoadBalancer",
        "gcp:storage/bucket:Bucket",
        "aws:s3/bucket:Bucket",
    }
    assert not run.types() & fleet_types


def test_replicas_need_a_cloud(required):
    with pytest.raises(ConfigError, match="ssh stack"):
        run_program("ssh", required("ssh") | {"synthdet:replicas": 2})


def test_max_replicas_below_replicas_is_refused(required):
    with pytest.raises(ConfigError, match="maxReplicas"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:replicas": 3, "synthdet:maxReplicas": 2})


def test_bad_domain_is_refused(required):
    with pytest.raises(ConfigError, match="domain"):
        fleet_run("gcp-t4", required, **{"synthdet:domain": "https://not a name"})


def test_m60_replicas_are_refused_before_anything_bills(required):
    with pytest.raises(ConfigError, match=r"m60.*Python is 3\.8"):
        fleet_run("aws-m60", required)


def test_each_gcp_fleet_stack_has_its_own_replica_service_account():
    from infra.gcp.group import replica_account_id

    ids = {replica_account_id(stack) for stack in ("gcp-t4", "gcp-t4-eu", "GCP_T4", "a" * 80, "x")}
    assert len(ids) == 5
    for account in ids:
        assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", account), account


def test_the_replicas_run_as_the_stacks_own_service_account(required):
    from infra.gcp.group import replica_account_id

    account = fleet_run("gcp-t4", required).one("gcp:serviceaccount/account:Account")
    assert account.plain("accountId") == replica_account_id("gcp-t4")
    assert len(account.plain("displayName")) <= 100


def test_a_fleet_whose_image_has_no_torch_must_pin_one(required):
    # A base AMI: torch would come from the index, whatever it serves the day a replica boots.
    with pytest.raises(ConfigError, match=r"(?s)synthdet:torchVersion is needed.*newest torch"):
        run_program("aws-t4", required("aws-t4") | {"synthdet:replicas": 3})
    with pytest.raises(ConfigError, match=r"(?s)torchVersion.*the image my-own-image"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:replicas": 3, "synthdet:image": "my-own-image"})
    # Pinned, every replica installs that release (boot.json carries it to the bootstrap).
    config = only_object_content(fleet_run("aws-t4", required), "aws:s3/bucketObjectv2:BucketObjectv2")
    assert config["options"]["torch_version"] == "2.9.1"
    fleet_run("gcp-t4", required)  # the image's own torch serves: nothing to pin


def test_gcp_warns_that_endpoint_cidrs_are_not_enforced(required):
    run = fleet_run("gcp-t4", required, **{"synthdet:endpointCidrs": ["192.0.2.0/24"]})
    assert any("endpointCidrs" in line for line in run.logs)


# ------------------------------------------------------------------ the instance side (no cloud)


def test_boot_config_round_trip_checks_every_archive(tmp_path):
    from bootstrap.api import DeployOptions, PipSource
    from bootstrap.boot_local import LOCAL_ADDRESS, BootConfigError, boot_config, deploy_inputs, load_config
    from bootstrap.startup_script import config_json
    from bootstrap.steps.base import Archive
    from serving.inputs import sha256_file
    from serving.settings import ServingSettings

    mar = tmp_path / "synthdet.mar"
    mar.write_bytes(b"archive")
    config = boot_config(
        models=[{"name": "synthdet", "file": mar.name, "sha256": sha256_file(mar)}],
        options=DeployOptions(
            serving=ServingSettings(score_threshold=0.7),
            public_port=8443,
            url_secret=FAKE_URL_SECRET,
            pip=PipSource(find_links="http://10.0.0.1/pypi/", trusted_hosts=("10.0.0.1",)),
        ),
    )
    path = tmp_path / "boot.json"
    path.write_text(config_json(config))
    models, options, built = deploy_inputs(load_config(path), tmp_path)
    assert [m.name for m in models] == ["synthdet"]
    assert built == {"synthdet": Archive(mar, sha256_file(mar))}
    assert options.public_address == LOCAL_ADDRESS and options.public_port == 8443
    assert options.url_secret == FAKE_URL_SECRET
    assert options.serving.score_threshold == 0.7
    assert options.pip.find_links == "http://10.0.0.1/pypi/" and options.pip.trusted_hosts == ("10.0.0.1",)
    mar.write_bytes(b"tampered")
    with pytest.raises(BootConfigError, match="sha256"):
        deploy_inputs(load_config(path), tmp_path)


@pytest.mark.parametrize(
    "source", ["gs://my-bucket", "gs://my-bucket/some/prefix", "s3://my-bucket", "http://10.0.0.1:8000"]
)
def test_startup_script_renders_valid_bash_for_every_source(source, fake_bundle):
    from bootstrap.startup_script import render_startup_script

    script = render_startup_script(source=source, bundle=fake_bundle, config_object="config/abc/boot.json")
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    assert f"SOURCE={source}" in script
    assert "{{" not in script  # every placeholder filled


def test_startup_script_refuses_a_strange_source(fake_bundle):
    from bootstrap.startup_script import render_startup_script

    with pytest.raises(ValueError, match="source"):
        render_startup_script(source="ftp://x; rm -rf /", bundle=fake_bundle, config_object="c.json")


def test_local_runner_has_the_ssh_connections_semantics(tmp_path):
    import os
    import stat

    from bootstrap import files
    from bootstrap.local_runner import LocalRunner
    from bootstrap.runner import CommandError

    runner = LocalRunner()
    result = runner.run("echo out; echo err >&2; exit 3", sudo=False, check=False)
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandError, match="exit 3"):
        runner.run("exit 3", sudo=False)
    assert runner.run('echo "$GREETING"', sudo=False, env={"GREETING": "hi there"}).stdout == "hi there\n"
    missing = str(tmp_path / "missing")
    if os.geteuid() != 0:
        pytest.skip("the file operations run through sudo as a non-root user")
    assert files.read_file(runner, missing) is None and files.sha256(runner, missing) is None
    target = tmp_path / "etc" / "file"
    target.parent.mkdir()
    digest = files.upload_atomic(runner, b"content\n", str(target), mode=0o640)
    assert target.read_bytes() == b"content\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert files.sha256(runner, str(target)) == digest
    assert files.read_file(runner, str(target)) == b"content\n"
    assert not list(target.parent.glob(".file.part-*"))  # the temporary was renamed into place


def test_the_wheel_instances_install_carries_every_module_and_template(tmp_path):
    """What boot_local imports on an instance must be in the wheel (an editable install hides gaps)."""
    import zipfile

    from bootstrap.bundle import REPO, build_wheel

    wheel = build_wheel(cache=tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        p.relative_to(REPO).as_posix()
        for folder in ("bootstrap", "serving", "handler")
        for p in (REPO / folder).rglob("*.py")
    }
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "bootstrap" / "templates").iterdir()}
    wanted |= {"serving/static/viewer.html", "handler/index_to_name.json"}
    assert not {n for n in wanted if "__pycache__" not in n} - names
    assert build_wheel(cache=tmp_path) == wheel  # cached by the sources' hash
