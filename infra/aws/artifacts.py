"""The AWS stack's private S3 bucket: the bundle and boot.json replicas fetch at boot."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.artifacts import ArtifactsArgs, config_name, object_resource_name


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
                object_resource_name(name, item),
                bucket=bucket.id,
                key=item.object_name,
                source=pulumi.FileAsset(str(item.path)),
                content_type="application/octet-stream",
                opts=object_opts,
            )
            for item in args.bundle.files()
        ]
        self.config_object = config_name(args.config_json)
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
