"""Bring this machine up as one replica behind a load balancer: the deploy steps, run here.

`python -m bootstrap.boot_local --config boot.json --archive-dir DIR` is what an
instance's startup script (`bootstrap/startup_script.py`) runs at every boot,
as root, with nobody logged in. It runs exactly the steps `synthdet deploy`
runs over SSH (`bootstrap.deploy.run_steps`), through `LocalRunner`, with
model archives built at `pulumi up` time and fetched from the stack's bucket.

The config (`boot.json`, written by `boot_config`) carries the URL secret:
it lives in the private bucket, never in instance metadata or logs.

Serving settings the stack left unset are chosen here, for this instance's
hardware, like every deploy does (`ServingSettings.for_hardware`): workers,
queue and nginx's limits follow the machine. The archive's batch settings were
fixed when `pulumi up` built it; a fleet's archives are built for its GPUs, and
an archive whose batch size differs from what this machine would choose is
served as built, with a line in the boot log saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from bootstrap.api import DeployOptions, DeployReporter, DeployResult, LineReporter
from bootstrap.steps.base import Archive
from serving.archive import CONFIG_FILE as ARCHIVE_CONFIG
from serving.inputs import sha256_file
from serving.models import ModelSpec
from serving.settings import ServingSettings

CONFIG_VERSION = 2
# Behind a load balancer the instance is reached by the balancer, not by a name of its
# own: the certificate names loopback and the final checks (health, one smoke image)
# go through nginx on this address, exactly the path the balancer's requests take.
LOCAL_ADDRESS = "127.0.0.1"


class BootConfigError(ValueError):
    pass


def boot_config(*, models: Sequence[dict[str, str]], options: DeployOptions) -> dict[str, Any]:
    """The JSON the instance reads. `models`: [{"name", "file", "sha256"}] (files beside it)."""
    return {
        "version": CONFIG_VERSION,
        "models": [{"name": m["name"], "file": m["file"], "sha256": m["sha256"]} for m in models],
        "options": options.to_dict(),
    }


def load_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BootConfigError(f"cannot read the boot config {path}: {exc}") from exc
    if config.get("version") != CONFIG_VERSION:
        raise BootConfigError(f"{path}: config version {config.get('version')!r}, expected {CONFIG_VERSION}")
    if not config.get("models"):
        raise BootConfigError(f"{path}: no models")
    return config


def deploy_inputs(
    config: dict[str, Any], archive_dir: Path, *, smoke: bool = True
) -> tuple[list[ModelSpec], DeployOptions, dict[str, Archive]]:
    """(models, options, built archives) for `run_steps`; each archive's sha256 is checked."""
    built: dict[str, Archive] = {}
    models = []
    for entry in config["models"]:
        path = Path(archive_dir) / entry["file"]
        if not path.is_file():
            raise BootConfigError(f"model archive {path} is missing")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise BootConfigError(f"model archive {path} has sha256 {got}, expected {entry['sha256']}")
        # The checkpoint is not needed here (the archive is built); the steps use the name.
        models.append(ModelSpec(entry["name"], path))
        built[entry["name"]] = Archive(path, got)
    try:
        options = DeployOptions.from_dict(config["options"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BootConfigError(f"bad deploy options in the boot config: {exc}") from exc
    return models, replace(options, public_address=LOCAL_ADDRESS, smoke=smoke), built


def archived_batch(path: Path) -> tuple[int, int] | None:
    """(batchSize, maxBatchDelay) in an archive's model-config.yaml; None if it has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = yaml.safe_load(archive.read(ARCHIVE_CONFIG))
        return int(config["batchSize"]), int(config["maxBatchDelay"])
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile, yaml.YAMLError):
        return None


def prebuilt(archives: Mapping[str, Archive], progress: DeployReporter) -> Any:
    """`run_steps`' archive builder for archives built at `pulumi up`: they are used as they
    are; one whose batch settings differ from what this machine's hardware chooses is noted."""

    def build(serving: ServingSettings) -> dict[str, Archive]:
        wanted = (serving.batch_size, serving.max_batch_delay_ms)
        for name, archive in archives.items():
            got = archived_batch(archive.path)
            if got is not None and got != wanted:
                progress.status(
                    f"note: {name}'s archive has batch size {got[0]} (delay {got[1]} ms); this "
                    f"machine's hardware would choose {wanted[0]} ({wanted[1]} ms). Set "
                    "synthdet:serving batch_size in the stack to choose it yourself."
                )
        return dict(archives)

    return build


def boot(config_path: Path, archive_dir: Path, *, smoke: bool = True) -> DeployResult:
    from bootstrap.deploy import run_steps
    from bootstrap.local_runner import LocalRunner

    config = load_config(config_path)
    models, options, archives = deploy_inputs(config, archive_dir, smoke=smoke)
    progress = LineReporter(lambda line: print(line, flush=True), "synthdet-boot: ")
    with LocalRunner() as runner:
        return run_steps(runner, models, options, progress, prebuilt(archives, progress), LOCAL_ADDRESS)


def summary(result: DeployResult) -> dict[str, Any]:
    """What to log: no URL (it carries the secret; serial logs are widely readable)."""
    return {
        "changed": result.changed,
        "cert_sha256": result.cert_sha256,
        "models": sorted(result.endpoints),
        "steps": [{"name": n, "changed": c} for n, c in result.steps],
        "host": result.host,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bootstrap.boot_local",
        description="Run the deploy steps on this machine (an instance's startup script calls this).",
    )
    parser.add_argument("--config", type=Path, required=True, help="boot.json from the stack's bucket")
    parser.add_argument("--archive-dir", type=Path, required=True, help="where the fetched .mar files are")
    parser.add_argument("--no-smoke", action="store_true", help="skip the final test image")
    args = parser.parse_args(argv)
    try:
        result = boot(args.config, args.archive_dir, smoke=not args.no_smoke)
    except Exception as exc:  # noqa: BLE001 - one clear line for the boot log, then fail
        print(f"synthdet-boot: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    print("synthdet-boot: serving " + json.dumps(summary(result), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
