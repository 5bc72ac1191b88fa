"""`synthdet check` on GCP, against a fake Compute Engine / Service Usage API over real HTTP.

Each first-`pulumi up` failure of a new project gets one line that names what
is wrong, where, and the command or page that fixes it; a healthy project has
no blocker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.preflight import Level
from tests.support.cloud_check import check, clear_cloud_env, faked_gcp, lines
from tests.support.fake_gcp_api import GcpWorld

PROJECT = "demo-project"
# The CPU stacks come with the CPU-serving work (stacks/Pulumi.gcp-cpu.yaml).
CPU_STACK = pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.gcp-cpu.yaml").is_file(),
    reason="no gcp-cpu stack in this checkout",
)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[GcpWorld]:
    with faked_gcp(monkeypatch, GcpWorld(project=PROJECT)) as fake:
        yield fake


def gcp(overrides: dict | None = None, *, in_program: bool = False):
    return check("gcp-t4", {"gcp:project": PROJECT, **(overrides or {})}, in_program=in_program)


def only_blocker(report) -> str:
    found = lines(report)
    assert len(found) == 1, found
    return found[0]


def test_a_healthy_project_has_no_blocker_and_lists_the_zones_to_fail_over_to(world: GcpWorld) -> None:
    report = gcp()
    assert lines(report) == [] and lines(report, "warning") == []
    assert report.zone_key == "gcp:zone" and report.zone == "us-central1-a"
    # The configured zone first, then the region's other zones with both T4 and n1-standard-4.
    assert report.zones == ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    said = "\n".join(lines(report, "ok"))
    assert "NVIDIA_T4_GPUS in us-central1: 4 of 4 free, 1 needed" in said
    assert "pytorch-2-9-cu129-ubuntu-2204-nvidia-580-v20261001" in said
    assert "198.51.100.7/32" in said  # who SSH will admit
    # It went over the wire to the fake: the requests the references describe.
    paths = {p for _, p in world.requests}
    assert f"/compute/v1/projects/{PROJECT}/regions/us-central1" in paths
    assert f"/v1/projects/{PROJECT}/services/compute.googleapis.com" in paths
    assert (
        "/compute/v1/projects/deeplearning-platform-release/global/images/family/"
        + ("pytorch-2-9-cu129-ubuntu-2204-nvidia-580")
        in paths
    )


def test_failure_1_gpu_quota_zero_names_the_quota_and_how_to_request_it(world: GcpWorld) -> None:
    world.without_gpu_quota()
    found = lines(gcp())
    assert len(found) == 2, found
    region, everywhere = found
    assert "NVIDIA_T4_GPUS in us-central1 is 0, the stack needs 1" in region
    assert f"https://console.cloud.google.com/iam-admin/quotas?project={PROJECT}" in region
    assert "--quota-id=NVIDIA-T4-GPUS-per-project-region --dimensions=region=us-central1" in region
    assert "GPUS_ALL_REGIONS in project demo-project is 0" in everywhere
    assert "free-trial" in everywhere and "--quota-id=GPUS-ALL-REGIONS-per-project" in everywhere


def test_replicas_need_quota_for_the_top_of_their_range(world: GcpWorld) -> None:
    world.region_quotas["us-central1"]["NVIDIA_T4_GPUS"] = (2, 0)
    world.project_quotas["GPUS_ALL_REGIONS"] = (8, 0)
    blocked = only_blocker(gcp({"synthdet:replicas": 2, "synthdet:maxReplicas": 3}))
    assert "NVIDIA_T4_GPUS in us-central1 is 2, the stack needs 3" in blocked


def test_spot_uses_the_preemptible_quota_where_the_project_has_one(world: GcpWorld) -> None:
    world.region_quotas["us-central1"]["NVIDIA_T4_GPUS"] = (0, 0)
    world.region_quotas["us-central1"]["PREEMPTIBLE_NVIDIA_T4_GPUS"] = (2, 0)
    assert lines(gcp({"synthdet:spot": True})) == []
    # Without a preemptible quota, spot VMs count against the standard one (GCP's rule).
    world.region_quotas["us-central1"]["PREEMPTIBLE_NVIDIA_T4_GPUS"] = (0, 0)
    assert "NVIDIA_T4_GPUS in us-central1 is 0" in only_blocker(gcp({"synthdet:spot": True}))


def test_quota_in_use_elsewhere_blocks_the_check_but_only_warns_in_the_program(world: GcpWorld) -> None:
    world.region_quotas["us-central1"]["NVIDIA_T4_GPUS"] = (1, 1)
    blocked = only_blocker(gcp())
    assert "1 of 1 in use, the stack needs 1 more" in blocked and "gcloud compute instances list" in blocked
    # On an update the stack's own VM is the one using it: not a reason to stop.
    assert lines(gcp(in_program=True)) == []
    assert lines(check("gcp-t4", {"gcp:project": PROJECT}, in_use_blocks=False)) == []
    assert any("1 of 1 in use" in w for w in lines(gcp(in_program=True), "warning"))


def test_failure_2_the_zone_does_not_offer_the_gpu_names_the_zones_that_do(world: GcpWorld) -> None:
    world.without_gpu_in("us-central1-a")
    report = gcp()
    blocked = only_blocker(report)
    assert "us-central1-a (gcp:zone) does not offer nvidia-tesla-t4 with n1-standard-4" in blocked
    assert "us-central1-b, us-central1-c, us-central1-f" in blocked
    assert blocked.endswith("fix: pulumi config set gcp:zone us-central1-b --stack gcp-t4")
    assert report.zones == ["us-central1-b", "us-central1-c", "us-central1-f"]


def test_a_region_without_the_gpu_points_to_zones_elsewhere(world: GcpWorld) -> None:
    blocked = only_blocker(gcp({"gcp:zone": "europe-west4-a"}))
    assert "no zone of europe-west4 offers nvidia-tesla-t4 with n1-standard-4" in blocked
    assert "pulumi config set gcp:zone us-central1-a --stack gcp-t4" in blocked


def test_a_zone_outside_its_region_is_named(world: GcpWorld) -> None:
    blocked = only_blocker(gcp({"gcp:zone": "us-central1-z"}))
    assert "gcp:zone us-central1-z is not a zone of us-central1" in blocked


def test_failure_3_the_compute_api_disabled_says_how_to_enable_it(world: GcpWorld) -> None:
    world.with_api_disabled("compute.googleapis.com")
    blocked = only_blocker(gcp())
    assert "the Compute Engine API (compute.googleapis.com) is not enabled in project demo-project" in blocked
    assert "fix: `gcloud services enable compute.googleapis.com --project demo-project`" in blocked


def test_failure_3_also_when_only_compute_engine_itself_says_so(world: GcpWorld) -> None:
    """Without the Service Usage API, Compute Engine's own 403 SERVICE_DISABLED is read instead."""
    world.with_api_disabled("serviceusage.googleapis.com").with_api_disabled("compute.googleapis.com")
    blocked = only_blocker(gcp())
    assert "the Compute Engine API (compute.googleapis.com) is not enabled" in blocked


def test_no_billing_account_says_where_to_link_one(world: GcpWorld) -> None:
    world.without_billing()
    world.with_api_disabled("serviceusage.googleapis.com")
    blocked = only_blocker(gcp())
    assert "project demo-project has no billing account linked" in blocked
    assert "https://console.cloud.google.com/billing/linkedaccount?project=demo-project" in blocked


def test_failure_3_not_logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint override, no Application Default Credentials anywhere (HOME is a test folder)."""
    clear_cloud_env(monkeypatch)
    report = gcp()
    blocked = only_blocker(report)
    assert blocked.startswith("blocker credentials: no Google credentials found")
    assert "gcloud auth application-default login" in blocked
    assert [f.topic for f in report.findings] == ["credentials"]  # nothing else is worth asking


def test_a_bad_gcp_credentials_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gcp:credentials` (what Pulumi's provider reads) is the key the check signs in with too."""
    clear_cloud_env(monkeypatch)
    blocked = only_blocker(gcp({"gcp:credentials": '{"type": "service_account"}'}))
    assert "gcp:credentials / GOOGLE_CREDENTIALS is not a service-account key" in blocked


def test_a_missing_project_says_how_to_set_it(world: GcpWorld) -> None:
    report = check("gcp-t4")  # the shipped stack sets no gcp:project
    assert only_blocker(report).endswith("fix: pulumi config set gcp:project YOUR-PROJECT-ID --stack gcp-t4")


def test_failure_5_the_image_family_is_gone_for_the_host(world: GcpWorld) -> None:
    world.without_image_family()
    blocked = only_blocker(gcp())
    assert (
        "image family pytorch-2-9-cu129-ubuntu-2204-nvidia-580 in project deeplearning-platform-release"
        in blocked
    )
    assert "was not found" in blocked and "the host cannot boot" in blocked
    assert "gcloud compute images list --project deeplearning-platform-release" in blocked
    assert (
        "pulumi config set synthdet:image projects/deeplearning-platform-release/global/images/family/"
        in blocked
    )


def test_failure_5_the_image_family_is_gone_for_the_replicas_too(world: GcpWorld) -> None:
    """The fleet template used to go unchecked until instances failed to boot."""
    world.without_image_family()
    world.project_quotas["GPUS_ALL_REGIONS"] = (4, 0)
    blocked = only_blocker(gcp({"synthdet:replicas": 2}))
    assert "was not found" in blocked and "the replicas cannot boot" in blocked


def test_an_image_override_is_checked_where_it_points(world: GcpWorld) -> None:
    image = "projects/my-images/global/images/family/my-family"
    assert "image family my-family in project my-images was not found" in only_blocker(
        gcp({"synthdet:image": image})
    )
    world.families[("my-images", "my-family")] = "my-family-v1"
    assert lines(gcp({"synthdet:image": image})) == []


def test_failure_7_networks_quota_full(world: GcpWorld) -> None:
    world.with_networks_full()
    blocked = only_blocker(gcp())
    assert "NETWORKS quota in project demo-project is full (5 of 5 in use); the stack creates 1" in blocked
    assert "gcloud compute networks list --project demo-project" in blocked
    assert "--quota-id=NETWORKS-per-project" in blocked


def test_every_line_is_one_line_with_a_level(world: GcpWorld) -> None:
    world.without_gpu_quota().with_networks_full().without_image_family().without_gpu_in("us-central1-a")
    report = gcp()
    assert len(report.blockers) == 5
    for finding in report.findings:
        assert "\n" not in finding.line()
        assert finding.level in Level


def test_the_sdk_layer_reads_and_starts_a_stopped_vm(world: GcpWorld) -> None:
    """For `synthdet wake/status`: the same client, the same endpoint switch."""
    from infra.gcp.cloud_api import GcpApi, NotFound

    world.instances[("us-central1-b", "synthdet-vm")] = "TERMINATED"
    api = GcpApi.connect(PROJECT)
    assert api.instance("us-central1-b", "synthdet-vm").status == "TERMINATED"
    api.start_instance("us-central1-b", "synthdet-vm")
    assert api.instance("us-central1-b", "synthdet-vm").status == "RUNNING"
    with pytest.raises(NotFound, match="instances/gone"):
        api.instance("us-central1-b", "gone")


def test_the_machine_types_vcpus_count_against_the_cpu_quota(world: GcpWorld) -> None:
    world.region_quotas["us-central1"]["CPUS"] = (2, 0)
    blocked = only_blocker(gcp())
    assert (
        "CPU quota CPUS in us-central1 is 2, the stack needs 4 (1 x n1-standard-4, 4 vCPUs each)" in blocked
    )


@CPU_STACK
def test_a_cpu_stack_counts_its_series_quota_and_needs_no_gpu(world: GcpWorld) -> None:
    """gcp-cpu (c3, no GPU): C3_CPUS where the region lists it; no GPU quota asked for."""
    world.machine_types["c3-standard-8"] = {"us-central1-a": 8}
    world.families[("debian-cloud", "debian-12")] = "debian-12-bookworm-v20261001"
    world.without_gpu_quota()
    world.region_quotas["us-central1"]["C3_CPUS"] = (4, 0)
    report = check("gcp-cpu", {"gcp:project": PROJECT})
    assert "CPU quota C3_CPUS in us-central1 is 4, the stack needs 8" in only_blocker(report)


@CPU_STACK
def test_without_gpu_quota_the_fix_also_points_at_the_cpu_stack(world: GcpWorld) -> None:
    world.without_gpu_quota()
    assert all("the `gcp-cpu` stack needs no GPU quota" in line for line in lines(gcp()))
