"""Performance paths that must stay correct: GPU JPEG routing, thread sharing, worker counts.

The GPU itself is not needed: nvJPEG's routing decision is pure, and
torchvision's decode_jpeg runs the same call on the CPU.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from handler import service
from handler.errors import RequestError
from handler.imaging import decode_image, jpeg_for_gpu, to_tensor
from handler.service import HandlerSettings, SynthDetHandler
from serving.models import ModelSpec
from serving.settings import ServingSettings
from synthdet import local_serve
from tests.support.images import encode, make_test_jpeg, photo, with_exif_orientation

LIMIT = 40_000_000


def test_the_apps_jpeg_goes_to_the_gpu() -> None:
    assert jpeg_for_gpu(make_test_jpeg(1280, 960, quality=75), LIMIT)


@pytest.mark.parametrize(
    "body",
    [
        encode(photo(), "PNG"),
        encode(photo().convert("CMYK"), "JPEG"),
        encode(photo().convert("L"), "JPEG"),
        with_exif_orientation(photo(), 6),
        make_test_jpeg(640, 480)[:300],
        b"\xff\xd8 not really a jpeg",
        b"",
    ],
    ids=["png", "cmyk", "grey", "exif-rotated", "truncated-header", "garbage", "empty"],
)
def test_everything_else_takes_the_pil_path(body: bytes) -> None:
    assert not jpeg_for_gpu(body, LIMIT)


def test_pixel_limit_applies_before_gpu_decoding() -> None:
    assert not jpeg_for_gpu(make_test_jpeg(640, 480), 640 * 480 - 1)


def _handler_decoding_with_torchvision() -> SynthDetHandler:
    handler = SynthDetHandler()
    handler.settings = HandlerSettings()
    handler.device = torch.device("cpu")  # decode_jpeg's CPU path: same call as on CUDA
    handler.gpu_jpeg = True
    return handler


def test_torchvision_decode_matches_the_pil_path_closely() -> None:
    frame = make_test_jpeg(1280, 590, quality=75, seed=3)
    handler = _handler_decoding_with_torchvision()
    decoded = handler._decode({"body": frame})
    expected = to_tensor(decode_image(frame, LIMIT))
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.float32
    assert decoded.shape == expected.shape == (3, 590, 1280)
    # Both are libjpeg(-turbo); nvJPEG differs from them by an IDCT rounding step at most.
    assert (decoded - expected).abs().max().item() <= 3 / 255


def test_bad_input_still_gets_its_4xx_when_gpu_decoding_is_on() -> None:
    handler = _handler_decoding_with_torchvision()
    assert isinstance(handler._decode({"body": make_test_jpeg(640, 480)[:9000]}), RequestError)
    assert isinstance(handler._decode({"body": b"hello"}), RequestError)
    rotated = handler._decode({"body": with_exif_orientation(photo(320, 240), 6)})
    assert isinstance(rotated, torch.Tensor) and rotated.shape == (3, 320, 240)  # PIL applied EXIF


def test_fp16_never_runs_on_cpu() -> None:
    handler = SynthDetHandler()
    handler.settings = HandlerSettings(precision="fp16")
    handler.device = torch.device("cpu")
    assert not isinstance(handler._autocast(), torch.autocast)


@pytest.mark.parametrize(
    ("workers", "physical", "threads"), [(None, 2, 2), (1, 8, 8), (2, 8, 4), (3, 8, 2), (4, 2, 1)]
)
def test_cpu_workers_share_the_physical_cores(
    monkeypatch: pytest.MonkeyPatch, workers: int | None, physical: int, threads: int
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    service._share_cores({"minWorkers": workers} if workers else None, physical)
    assert chosen == [threads]


def test_operators_thread_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    service._share_cores({"minWorkers": 4}, 8)
    assert chosen == []


@pytest.mark.parametrize(("visible", "count"), [("0,1", 2), ("0", 1), ("", 0), ("-1", 0)])
def test_visible_gpus_follow_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str, count: int
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert local_serve.visible_gpus() == count


def test_one_worker_per_gpu_else_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 2)
    assert local_serve.default_workers() == 2
    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 0)
    monkeypatch.setattr(local_serve.os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert local_serve.default_workers() == 1
    monkeypatch.setattr(local_serve.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert local_serve.default_workers() == 1


def test_blank_warmup_jpeg_is_a_plain_jpeg() -> None:
    blank = service._blank_jpeg(1280, 720)
    assert Image.open(io.BytesIO(blank)).size == (1280, 720) and jpeg_for_gpu(blank, LIMIT)


def test_unchanged_archives_are_not_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One cache for every caller (serve, deploy, replica bundles), keyed by content hashes."""
    from serving import archive

    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"weights")
    built: list[str] = []

    def fake_build(checkpoint: Path, store: Path, *, model_name: str, **_: object) -> Path:
        built.append(model_name)
        store.mkdir(parents=True, exist_ok=True)
        target = store / f"{model_name}.mar"
        target.write_bytes(b"archive")
        return target

    monkeypatch.setattr(archive, "build_archive", fake_build)
    monkeypatch.setenv("SYNTHDET_CACHE", str(tmp_path / "cache"))
    store, model = tmp_path / "store", ModelSpec("synthdet", checkpoint)
    for _ in range(2):
        assert local_serve.stage_archives([model], store, ServingSettings(), None) == {
            "synthdet": "synthdet.mar"
        }
    assert built == ["synthdet"]
    assert (store / "synthdet.mar").resolve().parent.parent == tmp_path / "cache" / "archives"
    local_serve.stage_archives([model], store, ServingSettings(score_threshold=0.7), None)
    assert len(built) == 2  # settings changed
    checkpoint.write_bytes(b"weights")  # touched, same bytes: no change
    local_serve.stage_archives([model], store, ServingSettings(score_threshold=0.7), None)
    assert len(built) == 2
    checkpoint.write_bytes(b"retrained weights")
    local_serve.stage_archives([model], store, ServingSettings(score_threshold=0.7), None)
    assert len(built) == 3  # checkpoint changed
    key = archive.archive_key(model, ServingSettings())
    assert key == archive.archive_key(ModelSpec("synthdet", checkpoint), ServingSettings())
    assert key != archive.archive_key(ModelSpec("other", checkpoint), ServingSettings())
    # The handler's code is in the key, exactly what the archive carries of it.
    copy = tmp_path / "handler"
    shutil.copytree(archive.HANDLER_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(archive, "HANDLER_DIR", copy)
    assert archive.archive_key(model, ServingSettings()) == key
    (copy / "notes.txt").write_text("not shipped")
    assert archive.archive_key(model, ServingSettings()) == key
    (copy / "service.py").write_text((copy / "service.py").read_text() + "\n# changed\n")
    assert archive.archive_key(model, ServingSettings()) != key


def test_memory_beyond_the_warm_up_high_water_mark_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(service, "_trim_heap", lambda: trims.append(1))
    handler = SynthDetHandler()
    handler._release_unusual_memory()  # no warm-up ran: the first batch sets the mark
    assert handler.memory_ceiling == pytest.approx(
        service._resident_bytes() * service.MEMORY_HEADROOM, rel=0.1
    )
    handler._release_unusual_memory()
    assert trims == []
    handler.memory_ceiling = 1.0  # far below: an unusually large batch just ran
    handler._release_unusual_memory()
    assert trims == [1]


def test_allocator_settings_apply_without_error() -> None:
    service._keep_freed_memory()
    service._trim_heap()
    assert service._resident_bytes() > 0


def test_cpu_serving_defaults_refuse_rather_than_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 0)
    monkeypatch.setattr(local_serve, "cpu_cores", lambda: 2)
    cpu = local_serve.local_defaults(ServingSettings(score_threshold=0.7))
    assert (cpu.workers, cpu.batch_size, cpu.job_queue_size) == (1, 1, 1)
    chosen = local_serve.local_defaults(ServingSettings(batch_size=3, job_queue_size=9))
    assert (chosen.batch_size, chosen.job_queue_size) == (3, 9)
    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 2)
    gpu = local_serve.local_defaults(ServingSettings())
    default = ServingSettings()
    assert (gpu.batch_size, gpu.job_queue_size) == (default.batch_size, default.job_queue_size)
