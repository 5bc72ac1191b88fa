"""Build the TorchServe model archive (.mar): weights, handler, label map, config.

Replaces the original archive.sh/build.sh. The archive is reproducible: the
same checkpoint, handler code, label map and settings give a byte-identical
file, so its sha256 identifies exactly what a host serves and a deploy can
skip an upload that would change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

import handler as handler_package
from serving.inputs import inputs_hash, sha256_file, sha256_files
from serving.models import DEFAULT_MODEL_NAME, ModelSpec, check_model_name
from serving.settings import ServingSettings

HANDLER_DIR = Path(handler_package.__file__).parent
# What of the handler package goes into an archive (and so into its identity).
HANDLER_SUFFIXES = (".py", ".json")
ENTRY_FILE = "torchserve_entry.py"
LABEL_MAP_FILE = "index_to_name.json"
WEIGHTS_FILE = "weights.pth"
CONFIG_FILE = "model-config.yaml"
MODEL_VERSION = "1.0"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's epoch: no build timestamps in the archive
FIXED_CREATED_ON = "01/01/1980 00:00:00"
# Bump when the archive's layout changes, so every cache and fingerprint moves on.
ARCHIVE_FORMAT = "2"


class ArchiveError(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where built archives (and replica bundles) are kept: $SYNTHDET_CACHE or ~/.cache/synthdet."""
    return Path(os.environ.get("SYNTHDET_CACHE") or Path.home() / ".cache" / "synthdet")


# The cache's folder of built archives (`synthdet cache` lists and clears it).
ARCHIVES_FOLDER = "archives"


def handler_sources() -> list[Path]:
    """The handler files an archive carries: the one definition every hash agrees with."""
    return sorted(
        path
        for path in HANDLER_DIR.iterdir()
        if path.is_file() and path.suffix in HANDLER_SUFFIXES and not path.name.startswith(".")
    )


def archive_inputs(model: ModelSpec, serving: ServingSettings) -> dict[str, str]:
    """Everything one model's archive is built from, as content hashes."""
    return {
        "name": model.name,
        "checkpoint": sha256_file(model.checkpoint),
        "label_map": sha256_file(model.label_map) if model.label_map else "",
        "handler": sha256_files(handler_sources(), HANDLER_DIR),
        "serving": inputs_hash(serving.to_dict()),
        "archive_format": ARCHIVE_FORMAT,
    }


def archive_key(model: ModelSpec, serving: ServingSettings) -> str:
    """Same key, same archive bytes (archives are reproducible): caches and diffs use it."""
    return inputs_hash(archive_inputs(model, serving))


def model_config(serving: ServingSettings) -> dict[str, Any]:
    """model-config.yaml: TorchServe's per-model keys plus our `handler:` section."""
    config: dict[str, Any] = {
        "batchSize": serving.batch_size,
        "maxBatchDelay": serving.max_batch_delay_ms,
        "responseTimeout": serving.response_timeout_s,
        "startupTimeout": serving.startup_timeout_s,
        "handler": serving.handler_settings().to_yaml(),
    }
    if serving.workers is not None:
        config["minWorkers"] = config["maxWorkers"] = serving.workers
    return config


def stage_model_dir(
    checkpoint: Path,
    dest: Path,
    *,
    label_map: Path | None = None,
    serving: ServingSettings | None = None,
    link_weights: bool = True,
) -> Path:
    """Lay out what the handler reads from its model dir (used in-process and for archives)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ArchiveError(f"checkpoint {checkpoint} not found; pass the .pth your training saved")
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / WEIGHTS_FILE
    if link_weights:
        weights.unlink(missing_ok=True)
        weights.symlink_to(checkpoint.resolve())
    else:
        shutil.copyfile(checkpoint, weights)
    shutil.copyfile(label_map or HANDLER_DIR / LABEL_MAP_FILE, dest / LABEL_MAP_FILE)
    config_text = yaml.safe_dump(model_config(serving or ServingSettings()), sort_keys=True)
    (dest / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    return dest


def build_archive(
    checkpoint: Path,
    out_dir: Path,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    label_map: Path | None = None,
    serving: ServingSettings | None = None,
) -> Path:
    """Write `<out_dir>/<model_name>.mar` and return its path."""
    check_model_name(model_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synthdet-archive-") as tmp:
        work = Path(tmp)
        staged = stage_model_dir(checkpoint, work / "model", label_map=label_map, serving=serving)
        extra = _stage_extra_files(work / "extra", staged)
        unpacked = _run_archiver(
            model_name, staged / WEIGHTS_FILE, extra, staged / CONFIG_FILE, work / "export"
        )
        _pin_manifest(unpacked)
        target = out_dir / f"{model_name}.mar"
        partial = target.with_suffix(".mar.partial")
        _zip_reproducibly(unpacked, partial)
        os.replace(partial, target)  # never leave a half-written archive under the real name
    return target


def _stage_extra_files(extra: Path, staged: Path) -> Path:
    """The `handler` package (the entry file imports it) and the label map."""
    package = extra / "handler"
    package.mkdir(parents=True)
    for source in handler_sources():
        shutil.copyfile(source, package / source.name)
    shutil.copyfile(staged / LABEL_MAP_FILE, extra / LABEL_MAP_FILE)
    return extra


def _run_archiver(model_name: str, weights: Path, extra: Path, config: Path, export: Path) -> Path:
    export.mkdir()
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        model_name,
        "--version",
        MODEL_VERSION,
        "--serialized-file",
        str(weights),
        "--handler",
        str(HANDLER_DIR / ENTRY_FILE),
        "--extra-files",
        str(extra),
        "--config-file",
        str(config),
        "--export-path",
        str(export),
        "--archive-format",
        "no-archive",
    ]
    # The archiver stages files in $TMPDIR/<model name>: give each build its own
    # TMPDIR, or two builds of the same model name at once would mix their files.
    scratch = export.parent / "archiver-tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise ArchiveError(
            f"torch-model-archiver failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-800:]}"
        )
    return export / model_name


def _pin_manifest(unpacked: Path) -> None:
    manifest_path = unpacked / "MAR-INF" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["createdOn"] = FIXED_CREATED_ON
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _zip_reproducibly(source: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w") as archive:
        for path in _files_sorted(source):
            name = path.relative_to(source).as_posix()
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            # Weights do not compress; storing them keeps builds fast.
            stored = name.endswith(".pth")
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            with path.open("rb") as src, archive.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)


def _files_sorted(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def cached_archive(model: ModelSpec, serving: ServingSettings, archives_dir: Path | None = None) -> Path:
    """`<name>.mar` for these inputs, built once: the same key always means the same bytes."""
    folder = (archives_dir or cache_dir() / ARCHIVES_FOLDER) / archive_key(model, serving)[:16]
    target = folder / f"{model.name}.mar"
    if not target.is_file():
        build_archive(
            model.checkpoint, folder, model_name=model.name, label_map=model.label_map, serving=serving
        )
    return target
