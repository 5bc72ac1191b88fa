"""`synthdet check` on AWS, against a fake STS / Service Quotas / EC2 over real HTTP (boto3 as users run it).

Plus unit tests of the quota-family table and one through botocore's Stubber.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.aws import preflight as aws_preflight
from infra.aws.cloud_api import AwsApi
from tests.support.cloud_check import check, clear_cloud_env, faked_aws, lines
from tests.support.fake_aws_api import AwsWorld


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsWorld]:
    with faked_aws(monkeypatch) as fake:
        yield fake


def only_blocker(report) -> str:
    found = lines(report)
    assert len(found) == 1, found
    return found[0]


def test_a_healthy_account_has_no_blocker_and_lists_the_zones(world: AwsWorld) -> None:
    report = check("aws-t4")
    assert lines(report) == [] and lines(report, "warning") == []
    assert report.zone_key == "synthdet:availabilityZone" and report.zone == ""
    assert report.zones == ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]
    said = "\n".join(lines(report, "ok"))
    assert "account 123456789012" in said
    assert "'Running On-Demand G and VT instances' (L-DB2E81BA) in us-east-1: 8 vCPUs, 4 needed" in said
    assert "ami-0t4000000000000002" in said  # the newest of the line, as get_ami(most_recent) picks
    # It went over the wire: STS, Service Quotas (JSON 1.1) and EC2 (Query) all answered.
    assert {"GetCallerIdentity", "GetServiceQuota", "DescribeInstanceTypeOfferings", "DescribeImages"} <= set(
        world.requests
    )


def test_failure_1_no_g_and_vt_vcpus_names_the_quota_and_the_request_command(world: AwsWorld) -> None:
    world.without_gpu_quota()
    blocked = only_blocker(check("aws-t4"))
    assert "EC2 quota 'Running On-Demand G and VT instances' (L-DB2E81BA) in us-east-1 is 0 vCPUs" in blocked
    assert "the stack needs 4 (1 x g4dn.xlarge, 4 vCPUs each)" in blocked
    assert (
        "`aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-DB2E81BA "
        "--desired-value 4 --region us-east-1`" in blocked
    )
    assert "https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-DB2E81BA" in blocked


def test_failure_1_spot_reads_the_spot_quota(world: AwsWorld) -> None:
    world.without_gpu_quota()
    world.quotas["L-DB2E81BA"] = 64.0  # on-demand plenty: spot has its own quota
    blocked = only_blocker(check("aws-t4", {"synthdet:spot": True}))
    assert "'All G and VT Spot Instance Requests' (L-3819A6DF) in us-east-1 is 0 vCPUs" in blocked


def test_replicas_need_vcpus_for_the_top_of_their_range(world: AwsWorld) -> None:
    blocked = only_blocker(
        check("aws-t4", {"synthdet:replicas": 2, "synthdet:maxReplicas": 3, "synthdet:torchVersion": "2.9.1"})
    )
    assert "is 8 vCPUs, the stack needs 12 (3 x g4dn.xlarge" in blocked


def test_failure_2_the_zone_does_not_offer_the_type(world: AwsWorld) -> None:
    world.without_type_in("us-east-1e")  # not offered there in the first place
    report = check("aws-t4", {"synthdet:availabilityZone": "us-east-1e"})
    blocked = only_blocker(report)
    assert "synthdet:availabilityZone us-east-1e does not offer g4dn.xlarge" in blocked
    assert "us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1f" in blocked
    assert blocked.endswith("fix: pulumi config set synthdet:availabilityZone us-east-1a --stack aws-t4")


def test_a_configured_zone_goes_first_in_the_failover_list(world: AwsWorld) -> None:
    report = check("aws-m60", {"synthdet:availabilityZone": "us-east-1b"})
    assert lines(report) == []
    assert report.zones == ["us-east-1b", "us-east-1a", "us-east-1d"]


def test_failure_3_credentials_refused(world: AwsWorld) -> None:
    world.with_bad_credentials()
    report = check("aws-t4")
    blocked = only_blocker(report)
    assert "AWS refused the credentials (InvalidClientTokenId" in blocked
    assert [f.topic for f in report.findings] == ["credentials"]


def test_failure_3_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_cloud_env(monkeypatch)
    blocked = only_blocker(check("aws-t4"))
    assert "no AWS credentials found: run `aws configure`" in blocked


def test_the_stacks_aws_profile_is_used_like_the_provider_does(world: AwsWorld) -> None:
    blocked = only_blocker(check("aws-t4", {"aws:profile": "no-such-profile"}))
    assert "AWS profile 'no-such-profile' (aws:profile) is not configured" in blocked
    assert "`aws configure --profile no-such-profile`" in blocked


def test_failure_5_the_ami_line_is_gone(world: AwsWorld) -> None:
    world.without_images()
    blocked = only_blocker(check("aws-t4"))
    assert (
        "no AMI named 'Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *' owned by amazon "
        "in us-east-1" in blocked
    )
    assert "aws ec2 describe-images --owners amazon --region us-east-1" in blocked
    assert "pulumi config set synthdet:image ami-... --stack aws-t4" in blocked


def test_failure_5_for_the_replicas_too(world: AwsWorld) -> None:
    world.without_images()
    blocked = only_blocker(check("aws-t4", {"synthdet:replicas": 2, "synthdet:torchVersion": "2.9.1"}))
    assert "the replicas cannot boot" in blocked


def test_the_m60_line_is_found_although_deprecated(world: AwsWorld) -> None:
    """Its AMIs are deprecated; the look-up includes those (as the program's does)."""
    said = "\n".join(lines(check("aws-m60"), "ok"))
    assert "ami-0m6000000000000001" in said and "deprecated: still launchable" in said


def test_an_ami_override_that_does_not_exist(world: AwsWorld) -> None:
    blocked = only_blocker(check("aws-t4", {"synthdet:image": "ami-0123456789abcdef0"}))
    assert "synthdet:image ami-0123456789abcdef0 is not an AMI in us-east-1" in blocked


def test_no_default_vpc(world: AwsWorld) -> None:
    world.default_vpc = None
    blocked = only_blocker(check("aws-t4"))
    assert (
        "no default VPC in us-east-1" in blocked
        and "`aws ec2 create-default-vpc --region us-east-1`" in blocked
    )


@pytest.mark.parametrize(
    ("instance_type", "on_demand", "spot"),
    [
        ("g4dn.xlarge", "L-DB2E81BA", "L-3819A6DF"),
        ("g3s.xlarge", "L-DB2E81BA", "L-3819A6DF"),
        ("p3.2xlarge", "L-417A185B", "L-7212CCBC"),
        ("c7i.2xlarge", "L-1216C47A", "L-34B43A08"),
        ("m7i.xlarge", "L-1216C47A", "L-34B43A08"),
    ],
)
def test_quota_families(instance_type: str, on_demand: str, spot: str) -> None:
    family = aws_preflight.quota_family(instance_type)
    assert family is not None and (family.on_demand, family.spot) == (on_demand, spot)


def test_the_quota_falls_back_to_the_aws_default_with_stubber() -> None:
    """A quota never changed has no applied value: GetServiceQuota says NoSuchResource, the default holds."""
    from botocore.stub import Stubber

    api = AwsApi("us-east-1", session=_offline_session())
    client = api._client("service-quotas")
    with Stubber(client) as stub:
        stub.add_client_error(
            "get_service_quota", service_error_code="NoSuchResourceException", http_status_code=400
        )
        stub.add_response(
            "get_aws_default_service_quota",
            {
                "Quota": {
                    "QuotaCode": "L-DB2E81BA",
                    "QuotaName": "Running On-Demand G and VT instances",
                    "Value": 0.0,
                }
            },
            {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"},
        )
        quota = api.quota("ec2", "L-DB2E81BA")
    assert (quota.value, quota.name) == (0.0, "Running On-Demand G and VT instances")


def _offline_session():
    import boto3

    return boto3.session.Session(
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x", region_name="us-east-1"
    )


def test_the_sdk_layer_reads_and_starts_a_stopped_instance(world: AwsWorld) -> None:
    """For `synthdet wake/status`: the same client, the same endpoint variables."""
    from infra.aws.cloud_api import NotFound

    world.instances["i-0123456789abcdef0"] = ("stopped", "us-east-1b")
    api = AwsApi("us-east-1")
    found = api.instance("i-0123456789abcdef0")
    assert (found.state, found.zone) == ("stopped", "us-east-1b")
    api.start_instance("i-0123456789abcdef0")
    assert api.instance("i-0123456789abcdef0").state == "pending"
    with pytest.raises(NotFound, match="InvalidInstanceID.NotFound"):
        api.instance("i-0000000000000dead")


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.aws-cpu.yaml").is_file(),
    reason="no aws-cpu stack in this checkout",
)
def test_without_gpu_quota_the_fix_also_points_at_the_cpu_stack(world: AwsWorld) -> None:
    world.without_gpu_quota()
    assert "the `aws-cpu` stack needs no GPU quota" in only_blocker(check("aws-t4"))
