"""The stack's private bucket: what replicas fetch at boot (wheel, model archives, boot.json).

Instances that come and go cannot be deployed to over SSH; each reads these
objects with its own identity (GCP service account, AWS instance profile) and
bootstraps itself. Object names carry a content hash (bootstrap/bundle.py), so
an unchanged model or project is no diff and a changed one is a new object
that the new startup script names: a rolling update never mixes versions.
boot.json holds the URL secret: the bucket is private and its object secret in
the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_gcp as gcp

from bootstrap.bundle import Bundle
from bootstrap.startup_script import config_object_name


@dataclass
class ArtifactsArgs:
    bundle: Bundle
    # boot.json's text (carries the URL secret).
    config_json: pulumi.Output[str]
    labels: dict[str, str] = field(default_factory=dict)
    # GCP: the bucket's location (the region) and project; unused on AWS.
    location: str = ""
    project: str | None = None


def _config_name(config_json: pulumi.Output[str]) -> pulumi.Output[str]:
    # A hash of the content, not the content: the name may be shown (and is in the script).
    return pulumi.Output.unsecret(config_json.apply(config_object_name))


class GcsArtifacts(pulumi.ComponentResource):
    """A private GCS bucket with the bundle; `source` is the gs:// URL the script fetches from."""

    bucket_name: pulumi.Output[str]
    source: pulumi.Output[str]
    config_object: pulumi.Output[str]
    objects: list[pulumi.Resource]

    def __init__(self, name: str, args: ArtifactsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:GcsArtifacts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket = gcp.storage.Bucket(
            f"{name}-bucket",
            location=args.location.upper(),
            project=args.project,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            # The stack owns everything in it: `pulumi destroy` must not stop at old objects.
            force_destroy=True,
            labels=args.labels,
            opts=child,
        )
        self.objects = [
            gcp.storage.BucketObject(
                f"{name}-{item.object_name.split('/')[0]}-{item.path.name}",
                bucket=bucket.name,
                name=item.object_name,
                source=pulumi.FileAsset(str(item.path)),
                content_type="application/octet-stream",
                opts=child,
            )
            for item in args.bundle.files()
        ]
        self.config_object = _config_name(args.config_json)
        self.objects.append(
            gcp.storage.BucketObject(
                f"{name}-boot-config",
                bucket=bucket.name,
                name=self.config_object,
                content=pulumi.Output.secret(args.config_json),  # type: ignore[arg-type]
                content_type="application/json",
                opts=child,
            )
        )
        self.bucket_name = bucket.name
        self.source = bucket.name.apply(lambda n: f"gs://{n}")
        self.register_outputs({"bucket_name": self.bucket_name, "source": self.source})


class S3Artifacts(pulumi.ComponentResource):
    """A private S3 bucket with the bundle; `source` is the s3:// URL the script fetches from."""

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    source: pulumi.Output[str]
    config_object: pulumi.Output[str]
    objects: list[pulumi.Resource]

    def __init__(self, name: str, args: ArtifactsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("synthdet:index:S3Artifacts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(
            f"{name}-bucket", bucket_prefix="synthdet-", force_destroy=True, tags=args.labels, opts=child
        )
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        object_opts = pulumi.ResourceOptions(parent=self, depends_on=[block])
        self.objects = [
            aws.s3.BucketObjectv2(
                f"{name}-{item.object_name.split('/')[0]}-{item.path.name}",
                bucket=bucket.id,
                key=item.object_name,
                source=pulumi.FileAsset(str(item.path)),
                content_type="application/octet-stream",
                opts=object_opts,
            )
            for item in args.bundle.files()
        ]
        self.config_object = _config_name(args.config_json)
        self.objects.append(
            aws.s3.BucketObjectv2(
                f"{name}-boot-config",
                bucket=bucket.id,
                key=self.config_object,
                content=pulumi.Output.secret(args.config_json),  # type: ignore[arg-type]
                content_type="application/json",
                opts=object_opts,
            )
        )
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.source = bucket.bucket.apply(lambda n: f"s3://{n}")
        self.register_outputs({"bucket_name": self.bucket_name, "source": self.source})
