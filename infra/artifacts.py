"""The stack's private bucket, shared shape: what replicas fetch at boot.

Instances that come and go cannot be deployed to over SSH; each reads the
bucket's objects with its own identity (GCP service account, AWS instance
profile) and bootstraps itself. Object names carry a content hash
(bootstrap/bundle.py), so an unchanged model or project is no diff and a
changed one is a new object that the new startup script names: a rolling
update never mixes versions. boot.json holds the URL secret: the bucket is
private and its object secret in the state. Each cloud's bucket component
(`infra/gcp/artifacts.py`, `infra/aws/artifacts.py`) takes these arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from bootstrap.bundle import Artifact, Bundle
from bootstrap.startup_script import config_object_name


@dataclass
class ArtifactsArgs:
    bundle: Bundle
    # boot.json's text (carries the URL secret).
    config_json: pulumi.Output[str]
    labels: dict[str, str] = field(default_factory=dict)


def config_name(config_json: pulumi.Output[str]) -> pulumi.Output[str]:
    # A hash of the content, not the content: the name may be shown (and is in the script).
    return pulumi.Output.unsecret(config_json.apply(config_object_name))


def object_resource_name(bucket: str, item: Artifact) -> str:
    """The Pulumi name of one uploaded file: stable while the file's object name is."""
    return f"{bucket}-{item.object_name.split('/')[0]}-{item.path.name}"
