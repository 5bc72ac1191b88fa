"""Model archives: build locally, upload only what differs, verified and atomic.

Archives are reproducible (same checkpoint, handler, settings -> same bytes),
so the sha256 of the installed .mar tells whether an upload is needed; this
is what makes a rerun fast. An upload goes to a hidden temporary name in the
model store, is checked with sha256sum on the host and only then renamed
over `<name>.mar`: a dropped connection or corruption never replaces the
served model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bootstrap.api import DeployOptions, ModelSpec, Progress
from bootstrap.archive import build_archive
from bootstrap.ssh import sha256_file
from bootstrap.steps.base import MODEL_STORE, SERVICE_USER, Context, DeployError, StepResult

NAME = "upload-model"
# Left free after an upload: a host with a full disk fails in odd places (logs,
# TorchServe unpacking the archive into its tmp dir on the same disk).
SPARE_BYTES = 64 * 1024 * 1024


def remote_mar(name: str) -> str:
    return f"{MODEL_STORE}/{name}.mar"


def build(
    models: Sequence[ModelSpec], options: DeployOptions, out_dir: Path, progress: Progress
) -> dict[str, tuple[Path, str]]:
    """Build every model's archive: name -> (.mar path, sha256, the model's identity)."""
    built = {}
    for spec in models:
        progress.status(f"building the model archive for {spec.name}")
        mar = build_archive(
            spec.checkpoint,
            out_dir / spec.name,
            model_name=spec.name,
            label_map=spec.label_map,
            serving=options.serving,
        )
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
        if ctx.conn.sha256(remote_mar(spec.name)) == want:
            continue
        size = mar.stat().st_size
        check_space(ctx, spec.name, size)
        label = f"{spec.name}.mar"

        def report(sent: int, total: int, label: str = label) -> None:
            ctx.progress.upload(label, sent, total)

        ctx.progress.upload(label, 0, size)
        ctx.conn.upload_atomic(
            mar,
            remote_mar(spec.name),
            mode=0o640,
            owner="root",
            group=SERVICE_USER,
            callback=report,
            expected_sha256=want,
        )
        uploaded.append(spec.name)
    detail = f"uploaded {', '.join(uploaded)}" if uploaded else "archives already in place"
    return StepResult(NAME, bool(uploaded), detail)
