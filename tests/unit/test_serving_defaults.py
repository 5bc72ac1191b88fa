"""One function chooses the serving settings the user left unset, from the hardware, and
`synthdet serve`, `synthdet archive`, a deploy and a replica's boot all go through it."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bootstrap import boot_local
from bootstrap.api import DeployOptions, LineReporter, SilentReporter
from bootstrap.deploy import run_steps
from bootstrap.steps.base import Archive
from serving.inputs import sha256_file
from serving.models import ModelSpec
from serving.settings import ServingSettings
from synthdet import local_serve
from tests.support.fake_host import FakeDebianHost


def chosen(settings: ServingSettings) -> tuple[int | None, int, int, int]:
    return settings.workers, settings.batch_size, settings.max_batch_delay_ms, settings.job_queue_size


def test_cpu_defaults_one_frame_per_pass_and_a_queue_no_longer_than_the_workers() -> None:
    assert chosen(ServingSettings().for_hardware(gpus=0, cpu_cores=2)) == (1, 1, 5, 1)
    # One worker on a CPU, however many cores: it runs a thread per physical core.
    assert chosen(ServingSettings().for_hardware(gpus=0, cpu_cores=16)) == (1, 1, 5, 1)
    assert chosen(ServingSettings().for_hardware(gpus=0, cpu_cores=1)) == (1, 1, 5, 1)


def test_gpu_defaults_one_worker_per_gpu_batches_of_five_and_a_queue() -> None:
    assert chosen(ServingSettings().for_hardware(gpus=1, cpu_cores=4)) == (1, 5, 5, 32)
    assert chosen(ServingSettings().for_hardware(gpus=4, cpu_cores=48)) == (4, 5, 5, 32)


def test_what_the_user_set_always_wins() -> None:
    mine = ServingSettings(batch_size=3, job_queue_size=9, workers=2)
    assert chosen(mine.for_hardware(gpus=0, cpu_cores=2)) == (2, 3, 5, 9)
    assert chosen(mine.for_hardware(gpus=4, cpu_cores=2)) == (2, 3, 5, 9)
    # Workers set, queue not: on CPU the queue follows the workers the user chose.
    assert chosen(ServingSettings(workers=3).for_hardware(gpus=0, cpu_cores=2)) == (3, 1, 5, 3)
    # A value set to the GPU default is still set: a CPU keeps it.
    assert ServingSettings(batch_size=5).for_hardware(gpus=0, cpu_cores=2).batch_size == 5
    # Choosing twice changes nothing.
    once = ServingSettings().for_hardware(gpus=0, cpu_cores=16)
    assert once.for_hardware(gpus=0, cpu_cores=16) == once


def test_serve_chooses_for_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 0)
    monkeypatch.setattr(local_serve, "cpu_cores", lambda: 16)
    assert chosen(local_serve.local_defaults(ServingSettings())) == (1, 1, 5, 1)
    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 2)
    assert chosen(local_serve.local_defaults(ServingSettings())) == (2, 5, 5, 32)


def archived_config(mar: Path) -> dict[str, object]:
    with zipfile.ZipFile(mar) as archive:
        config: dict[str, object] = yaml.safe_load(archive.read("model-config.yaml"))
    return config


@pytest.mark.parametrize(
    ("args", "gpus_here", "batch"),
    [
        (["--for", "cpu"], 1, 1),
        (["--for", "gpu"], 0, 5),
        (["--for", "cpu", "--batch-size", "3"], 0, 3),
        ([], 0, 1),  # this machine: no GPU
        ([], 1, 5),  # this machine: one GPU
    ],
    ids=["for cpu", "for gpu", "batch set", "here, no gpu", "here, a gpu"],
)
def test_archive_batch_follows_the_hardware_it_is_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], gpus_here: int, batch: int
) -> None:
    from synthdet.cli import app

    monkeypatch.setattr(local_serve, "visible_gpus", lambda: gpus_here)
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"the archiver copies the weights, it does not read them")
    out = tmp_path / "store"
    result = CliRunner().invoke(app, ["archive", "--model", str(checkpoint), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    config = archived_config(out / "synthdet.mar")
    assert config["batchSize"] == batch
    assert "minWorkers" not in config  # the serving machine chooses its workers


@pytest.fixture
def host() -> Iterator[FakeDebianHost]:
    fake = FakeDebianHost(cpus=16)
    try:
        yield fake
    finally:
        fake.close()


def test_a_deploy_to_a_cpu_host_serves_batch_1_with_a_short_queue(
    host: FakeDebianHost, tmp_path: Path
) -> None:
    """run_steps reads the host's facts (16 cores, no GPU), then builds the archive for them."""
    mar = tmp_path / "synthdet.mar"
    mar.write_bytes(b"archive")
    asked: list[ServingSettings] = []

    def build(serving: ServingSettings) -> dict[str, Archive]:
        asked.append(serving)
        return {"synthdet": Archive(mar, sha256_file(mar))}

    options = DeployOptions(public_port=host.https_port, smoke=False, health_timeout_s=30)
    models = [ModelSpec("synthdet", Path("a.pth"))]
    run_steps(host, models, options, SilentReporter(), build, "127.0.0.1")
    (serving,) = asked
    assert chosen(serving) == (1, 1, 5, 1)  # one CPU worker, whatever the cores: its threads use them
    config = host.text("/etc/synthdet/config.properties")
    assert "default_workers_per_model=1" in config.splitlines()
    assert "job_queue_size=1" in config.splitlines()
    # nginx lets through to TorchServe only what the one worker computes.
    assert "limit_conn synthdet_inflight 1;" in host.text("/etc/nginx/sites-available/synthdet")


def test_a_replica_boot_chooses_for_its_hardware_and_notes_an_archive_built_otherwise(
    host: FakeDebianHost, tmp_path: Path
) -> None:
    """boot_local runs run_steps with archives built at `pulumi up`: they are served as built."""
    mar = tmp_path / "synthdet.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        archive.writestr("model-config.yaml", yaml.safe_dump({"batchSize": 5, "maxBatchDelay": 5}))
    archives = {"synthdet": Archive(mar, sha256_file(mar))}
    lines = io.StringIO()
    reporter = LineReporter(lambda line: print(line, file=lines), "boot: ")
    options = DeployOptions(public_port=host.https_port, smoke=False, health_timeout_s=30)
    models = [ModelSpec("synthdet", mar)]
    run_steps(host, models, options, reporter, boot_local.prebuilt(archives, reporter), "127.0.0.1")
    assert (
        "boot: note: synthdet's archive has batch size 5 (delay 5 ms); this machine's hardware "
        "would choose 1 (5 ms)" in lines.getvalue()
    )
    assert "job_queue_size=1" in host.text("/etc/synthdet/config.properties").splitlines()
    assert boot_local.archived_batch(mar) == (5, 5)
    assert boot_local.archived_batch(tmp_path / "missing.mar") is None
