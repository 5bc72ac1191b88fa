"""Model archives: built (or taken from the cache) here, uploaded only when they differ.

Archives are reproducible (same checkpoint, handler, settings -> same bytes),
so the sha256 of the installed .mar tells whether an upload is needed; this
is what makes a rerun fast. The upload itself is `bootstrap.files.upload_atomic`:
a dropped connection or corruption never replaces the served model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootstrap import files
from bootstrap.api import DeployReporter
from bootstrap.steps.base import MODEL_STORE, SERVICE_USER, Archive, DeployError, Run
from bootstrap.steps.layout import Layout
from bootstrap.steps.step import Done, Step
from serving.archive import ArchiveError, cached_archive
from serving.inputs import sha256_file
from serving.models import ModelSpec, unique_names
from serving.settings import ServingSettings

# Left free after an upload: a host with a full disk fails in odd places (logs,
# TorchServe unpacking the archive into its tmp dir on the same disk).
SPARE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModelStore:
    """Every model's archive is in MODEL_STORE: model name -> that archive's sha256."""

    sha256: Mapping[str, str]


def remote_mar(name: str) -> str:
    return f"{MODEL_STORE}/{name}.mar"


def check_models(models: Sequence[ModelSpec]) -> None:
    """What can be known about the models before connecting: a bad checkpoint fails here,
    not after minutes of waiting for a booting host."""
    from handler.checkpoint import CheckpointError, read_checkpoint  # torch: only when deploying

    if not models:
        raise ValueError("deploy needs at least one model (--model NAME=PATH)")
    unique_names(list(models))
    for spec in models:
        if not spec.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {spec.checkpoint} for model {spec.name} not found")
        if spec.label_map is not None and not spec.label_map.is_file():
            raise FileNotFoundError(f"label map {spec.label_map} for model {spec.name} not found")
        try:
            read_checkpoint(spec.checkpoint)
        except CheckpointError as exc:
            raise DeployError(f"model {spec.name}: {exc}") from exc


def build(
    models: Sequence[ModelSpec], serving: ServingSettings, work_dir: Path | None, progress: DeployReporter
) -> dict[str, Archive]:
    """Every model's archive for these settings, from the cache when its inputs are unchanged."""
    built: dict[str, Archive] = {}
    for spec in models:
        progress.status(f"building the model archive for {spec.name}")
        try:
            mar = cached_archive(spec, serving, work_dir)
        except ArchiveError as exc:
            raise DeployError(str(exc)) from exc
        built[spec.name] = Archive(mar, sha256_file(mar))
    return built


def free_bytes(run: Run, path: str) -> int | None:
    """Bytes available to root on the filesystem holding `path` (None if df fails)."""
    res = run.conn.run(f"df -P -B1 {path} | awk 'NR == 2 {{ print $4 }}'", check=False)
    text = res.stdout.strip()
    return int(text) if res.ok and text.isdigit() else None


def check_space(run: Run, name: str, size: int) -> None:
    """Refuse before uploading when the archive cannot fit: the served model stays as is.

    Old and new archive coexist until the atomic rename, so the new one's size
    must be free on top of what is used now.
    """
    free = free_bytes(run, MODEL_STORE)
    if free is None or free >= size + SPARE_BYTES:
        return
    mib = 1024 * 1024
    raise DeployError(
        f"not enough disk space on the host for {name}.mar: it needs {size / mib:.0f} MiB "
        f"(+{SPARE_BYTES // mib} MiB to spare) in {MODEL_STORE}, but only {free / mib:.0f} MiB "
        "are free. Nothing was changed: the current model is still served. Free some space "
        "(e.g. `apt-get clean`, `journalctl --vacuum-size=100M`) and rerun the deploy."
    )


def apply(run: Run, layout: Layout) -> Done[ModelStore]:
    uploaded = []
    for spec in run.models:
        archive = run.archives[spec.name]
        if files.sha256(run.conn, remote_mar(spec.name)) == archive.sha256:
            continue
        size = archive.path.stat().st_size
        check_space(run, spec.name, size)
        label = f"{spec.name}.mar"

        def report(sent: int, label: str = label, size: int = size) -> None:
            run.progress.upload(label, sent, size)

        report(0)
        files.upload_atomic(
            run.conn,
            archive.path,
            remote_mar(spec.name),
            mode=0o640,
            owner="root",
            group=SERVICE_USER,
            on_sent=report,
            expected_sha256=archive.sha256,
        )
        uploaded.append(spec.name)
    detail = f"uploaded {', '.join(uploaded)}" if uploaded else "archives already in place"
    store = ModelStore({spec.name: run.archives[spec.name].sha256 for spec in run.models})
    return Done(bool(uploaded), detail, store)


# The model store is the layout's.
STEP = Step("upload-model", apply)
