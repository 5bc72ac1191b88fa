"""Model archives: built (or taken from the cache) here, uploaded only when they differ.

Archives are reproducible (same checkpoint, handler, settings -> same bytes),
so the sha256 of the installed .mar tells whether an upload is needed; this
is what makes a rerun fast. The upload itself is `bootstrap.files.upload_atomic`:
a dropped connection or corruption never replaces the served model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bootstrap import files
from bootstrap.api import DeployOptions, Progress
from bootstrap.steps.base import MODEL_STORE, SERVICE_USER, Context, DeployError, StepResult
from serving.archive import ArchiveError, cached_archive
from serving.inputs import sha256_file
from serving.models import ModelSpec

NAME = "upload-model"
# Left free after an upload: a host with a full disk fails in odd places (logs,
# TorchServe unpacking the archive into its tmp dir on the same disk).
SPARE_BYTES = 64 * 1024 * 1024

# model name -> (its .mar here, that file's sha256)
Built = dict[str, tuple[Path, str]]


def remote_mar(name: str) -> str:
    return f"{MODEL_STORE}/{name}.mar"


def build(models: Sequence[ModelSpec], options: DeployOptions, progress: Progress) -> Built:
    """Every model's archive, from the cache when its inputs are unchanged."""
    built: Built = {}
    for spec in models:
        progress.status(f"building the model archive for {spec.name}")
        try:
            mar = cached_archive(spec, options.serving, options.work_dir)
        except ArchiveError as exc:
            raise DeployError(str(exc)) from exc
        built[spec.name] = (mar, sha256_file(mar))
    return built


def free_bytes(ctx: Context, path: str) -> int | None:
    """Bytes available to root on the filesystem holding `path` (None if df fails)."""
    res = ctx.conn.run(f"df -P -B1 {path} | awk 'NR == 2 {{ print $4 }}'", check=False)
    text = res.stdout.strip()
    return int(text) if res.ok and text.isdigit() else None


def check_space(ctx: Context, name: str, size: int) -> None:
    """Refuse before uploading when the archive cannot fit: the served model stays as is.

    Old and new archive coexist until the atomic rename, so the new one's size
    must be free on top of what is used now.
    """
    free = free_bytes(ctx, MODEL_STORE)
    if free is None or free >= size + SPARE_BYTES:
        return
    mib = 1024 * 1024
    raise DeployError(
        f"not enough disk space on the host for {name}.mar: it needs {size / mib:.0f} MiB "
        f"(+{SPARE_BYTES // mib} MiB to spare) in {MODEL_STORE}, but only {free / mib:.0f} MiB "
        "are free. Nothing was changed: the current model is still served. Free some space "
        "(e.g. `apt-get clean`, `journalctl --vacuum-size=100M`) and rerun the deploy."
    )


def apply(ctx: Context) -> StepResult:
    uploaded = []
    for spec in ctx.models:
        mar = ctx.archives[spec.name]
        want = ctx.archive_sha256[spec.name]
        if files.sha256(ctx.conn, remote_mar(spec.name)) == want:
            continue
        size = mar.stat().st_size
        check_space(ctx, spec.name, size)
        label = f"{spec.name}.mar"

        def report(sent: int, label: str = label, size: int = size) -> None:
            ctx.progress.upload(label, sent, size)

        report(0)
        files.upload_atomic(
            ctx.conn,
            mar,
            remote_mar(spec.name),
            mode=0o640,
            owner="root",
            group=SERVICE_USER,
            on_sent=report,
            expected_sha256=want,
        )
        uploaded.append(spec.name)
    detail = f"uploaded {', '.join(uploaded)}" if uploaded else "archives already in place"
    return StepResult(NAME, bool(uploaded), detail)
