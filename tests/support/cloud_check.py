"""Running the pre-flight check in tests: a shipped stack's config with overrides, the env for the fakes."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from infra import preflight
from infra.config import Settings
from tests.support.fake_aws_api import AwsWorld, fake_aws_api
from tests.support.fake_gcp_api import GcpWorld, fake_gcp_api

DEPLOYER_IP = "198.51.100.7"
# What boto3 and google-auth read from the environment; cleared so that no real
# account, profile or cached login of the machine running the tests is used.
CLOUD_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CREDENTIALS",
    "GOOGLE_PROJECT",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "CLOUDSDK_CORE_PROJECT",
    "SYNTHDET_GCP_API_ENDPOINT",
)


def clear_cloud_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name, raising=False)
    # Not on a GCE VM: google-auth need not probe the metadata server (3 x 3 s offline).
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def point_at_fake_aws(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


@contextmanager
def faked_gcp(monkeypatch: pytest.MonkeyPatch, world: GcpWorld | None = None) -> Iterator[GcpWorld]:
    """The fake Google Cloud API serving, and the only cloud this process's clients reach."""
    clear_cloud_env(monkeypatch)
    with fake_gcp_api(world) as (url, fake):
        monkeypatch.setenv("SYNTHDET_GCP_API_ENDPOINT", url)
        yield fake


@contextmanager
def faked_aws(monkeypatch: pytest.MonkeyPatch, world: AwsWorld | None = None) -> Iterator[AwsWorld]:
    """The fake AWS serving, and the only cloud this process's clients (boto3) reach."""
    clear_cloud_env(monkeypatch)
    with fake_aws_api(world) as (url, fake):
        point_at_fake_aws(monkeypatch, url)
        yield fake


def settings_for(stack: str, overrides: Mapping[str, Any] | None = None) -> Settings:
    """The shipped stack's settings, read as the program reads them, plus overrides."""
    config = preflight.stack_config(stack) | {"synthdet:model": "synthdet.pth"}
    config |= {k: preflight.engine_value(v) for k, v in (overrides or {}).items()}
    settings, _ = preflight.settings_from_config(config)
    return settings


def check(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    in_program: bool = False,
    in_use_blocks: bool = True,
) -> preflight.Report:
    ctx = preflight.CheckContext(
        stack, settings_for(stack, overrides), in_program=in_program, in_use_blocks=in_use_blocks
    )
    return preflight.run_checks(ctx, lookup_ip=lambda: DEPLOYER_IP)


def lines(report: preflight.Report, level: str = "blocker") -> list[str]:
    return [f.line() for f in report.findings if f.level.value == level]


@contextmanager
def stack_file(name: str, config: Mapping[str, Any]) -> Iterator[str]:
    """A stack file of the user's own kind (stacks/Pulumi.my-*.yaml: ignored by git), removed after."""
    import yaml

    assert name.startswith("my-"), "only stacks/Pulumi.my-*.yaml are ignored by git"
    path = preflight.stack_file(name)
    assert not path.exists(), f"{path} exists: not ours to overwrite"
    path.write_text(yaml.safe_dump({"config": dict(config)}))
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)
