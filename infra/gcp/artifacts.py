"""The GCP stack's private GCS bucket: the bundle and boot.json replicas fetch at boot."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.artifacts import ArtifactsArgs, config_name, object_resource_name


@dataclass
class GcsArtifactsArgs(ArtifactsArgs):
    location: str = ""  # the region
    project: str | None = None


class GcsArtifacts(pulumi.ComponentResource):
    """A private GCS bucket with the bundle; `source` is the gs:// URL the script fetches from."""

    bucket_name: pulumi.Output[str]
    source: pulumi.Output[str]
    config_object: pulumi.Output[str]
    objects: list[pulumi.Resource]

    def __init__(self, name: str, args: GcsArtifactsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
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
                object_resource_name(name, item),
                bucket=bucket.name,
                name=item.object_name,
                source=pulumi.FileAsset(str(item.path)),
                content_type="application/octet-stream",
                opts=child,
            )
            for item in args.bundle.files()
        ]
        self.config_object = config_name(args.config_json)
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
