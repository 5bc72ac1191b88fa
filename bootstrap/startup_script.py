"""The replica's startup script: fetch the bundle, install the bootstrap, run the steps.

Rendered from `templates/startup.sh` at `pulumi up` time and handed to each
instance by the cloud (GCP instance template metadata `startup-script`, AWS
launch template user data). Where the files come from is one URL:
`gs://BUCKET[/PREFIX]`, `s3://BUCKET[/PREFIX]` or a plain `http(s)://` directory
(the test host's case: the guest has no cloud, only the host side's HTTP server).

The script holds no secret: the URL secret is in boot.json, in the bucket.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from bootstrap.api import PipSource
from bootstrap.bundle import Bundle
from bootstrap.steps.base import render_template
from bootstrap.steps.venv import pip_args
from serving.inputs import sha256_bytes

TEMPLATE = "startup.sh"
SOURCE_PATTERN = re.compile(r"^(gs|s3)://[a-z0-9][a-z0-9._-]{1,220}(/[A-Za-z0-9._/-]*)?$|^https?://\S+$")
# How often boot_local is tried before the instance gives up (and autohealing replaces it).
ATTEMPTS = 3


def config_object_name(config_json: str) -> str:
    """Content-addressed: a changed config is a new object (and a new script: a rollout)."""
    return f"config/{sha256_bytes(config_json)[:16]}/boot.json"


def config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def render_startup_script(
    *,
    source: str,
    bundle: Bundle,
    config_object: str,
    pip: PipSource | None = None,
    attempts: int = ATTEMPTS,
) -> str:
    """The bash script; `pip` is where the boot venv's packages come from (None: PyPI)."""
    source = source.rstrip("/")
    if not SOURCE_PATTERN.match(source):
        raise ValueError(f"bad bundle source {source!r}: gs://BUCKET, s3://BUCKET or an http(s) URL")
    q = shlex.quote
    archives = "\n".join(f"{a.object_name} {a.sha256}" for a in bundle.archives.values())
    return render_template(
        TEMPLATE,
        source=q(source),
        config_object=q(config_object),
        wheel_object=q(bundle.wheel.object_name),
        wheel_digest=q(bundle.wheel.sha256),
        archives=q(archives),
        requirements_object=q(bundle.boot_requirements.object_name),
        requirements_digest=q(bundle.boot_requirements.sha256),
        pip_args=shlex.join(pip_args(pip or PipSource())),
        attempts=int(attempts),
    )


def config_models(bundle: Bundle) -> list[dict[str, str]]:
    """boot.json's model entries: each archive is fetched beside boot.json under its file name."""
    return [{"name": name, "file": a.path.name, "sha256": a.sha256} for name, a in bundle.archives.items()]
