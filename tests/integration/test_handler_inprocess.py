"""The handler TorchServe runs, driven in-process through TorchServe's own Context."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serving.archive import build_archive
from serving.settings import ServingSettings
from synthdet.inprocess import HandlerError, InProcessModel, load_in_process
from synthdet.reference import load_reference_model, reference_detections
from tests.support.images import bomb_png, encode, make_test_jpeg, photo
from tests.support.matching import assert_same_detections

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(unity_checkpoint: Path) -> Iterator[InProcessModel]:
    with load_in_process(unity_checkpoint, serving=ServingSettings(warmup_sizes=((320, 240),))) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def reference(unity_checkpoint: Path) -> torch.nn.Module:
    return load_reference_model(unity_checkpoint)


def test_detections_equal_the_reference_pipeline(model: InProcessModel, reference: torch.nn.Module) -> None:
    image = make_test_jpeg(640, 480, seed=4)
    served = model.predict(image)
    assert served, "the seeded random model should find something in this frame"
    assert_same_detections(served, reference_detections(reference, image))


def test_a_batch_of_mixed_sizes_answers_each_as_if_alone(model: InProcessModel) -> None:
    images = [
        make_test_jpeg(640, 480, seed=1),
        make_test_jpeg(640, 296, seed=2),
        make_test_jpeg(640, 480, seed=3),
    ]
    alone = [model.predict(image) for image in images]
    assert model.predict_batch(images) == alone


def test_one_bad_request_does_not_spoil_its_batch(model: InProcessModel) -> None:
    good = make_test_jpeg(320, 240, seed=5)
    answers = model.handle([{"body": good}, {"body": b"garbage"}, {"data": good}])
    # Its own status too, set for that request only (TorchServe sends it to that client).
    statuses = [model.context.get_response_status(index)[0] for index in range(3)]
    assert statuses == [200, 415, 200]
    assert json.loads(answers[0]) == json.loads(answers[2]) == model.predict(good)
    assert json.loads(answers[1])["code"] == 415


def test_headers_of_one_request_do_not_change_its_batch(model: InProcessModel) -> None:
    """TorchServe's BaseHandler reads `describe` and `explain` from a batch's first request only;
    a client sending them must not turn its neighbours' answers into something else."""
    good = make_test_jpeg(320, 240, seed=5)
    alone = model.predict(good)
    for header in ("describe", "explain"):
        answers = model.handle([{"body": good}, {"body": good}], [{header: "True"}, {}])
        assert [json.loads(answer) for answer in answers] == [alone, alone], header


def test_describe_says_what_the_worker_serves(model: InProcessModel) -> None:
    """The management API's describe (`GET /models/NAME?customized=true`) runs as a batch of one."""
    [answer] = model.handle([{"body": b""}], [{"describe": "True"}])
    described = json.loads(answer)
    assert described["classes"][0] == "book_dorkdiaries_aladdin" and len(described["classes"]) == 63
    assert described["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert described["settings"]["score_threshold"] == 0.5
    assert described["precision"] == "fp32"
    if not torch.cuda.is_available():  # a CPU worker says what the CPU has and the path it chose
        cpu = described["cpu"]
        assert cpu["physical_cores"] >= 1
        if "OMP_NUM_THREADS" not in os.environ:  # an operator's thread count wins
            assert cpu["torch_threads"] == cpu["physical_cores"]
        assert cpu["path"].startswith("fp32, exact") and isinstance(cpu["flags"], list)


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"", 400), (b"\xff\xd8\xff\xe0garbage", 400), (bomb_png(), 413), (b"GIF89a", 415)],
)
def test_bad_input_gets_a_status_and_message(model: InProcessModel, body: bytes, status: int) -> None:
    with pytest.raises(HandlerError) as caught:
        model.predict(body)
    assert caught.value.status == status


def test_coordinates_are_pixels_of_the_sent_image(model: InProcessModel) -> None:
    for width, height in [(1280, 590), (300, 200)]:
        for detection in model.predict(make_test_jpeg(width, height, seed=7)):
            box = detection["box"]
            assert 0 <= box["top_left"]["x"] <= box["bottom_right"]["x"] <= width
            assert 0 <= box["top_left"]["y"] <= box["bottom_right"]["y"] <= height


def test_png_and_grayscale_are_served(model: InProcessModel) -> None:
    image = photo(320, 240, seed=9)
    assert isinstance(model.predict(encode(image, "PNG")), list)
    assert isinstance(model.predict(encode(image.convert("L"), "JPEG")), list)


def test_threshold_is_configurable(model: InProcessModel, unity_checkpoint: Path) -> None:
    image = make_test_jpeg(320, 240, seed=4)
    default = model.predict(image)
    assert any(detection["score"] <= 0.9 for detection in default)
    strict = ServingSettings(score_threshold=0.9, warmup_sizes=())
    with load_in_process(unity_checkpoint, serving=strict) as high:
        kept = high.predict(image)
    assert kept == [detection for detection in default if detection["score"] > 0.9]


def test_archive_is_reproducible_and_complete(unity_checkpoint: Path, tmp_path: Path) -> None:
    first = build_archive(unity_checkpoint, tmp_path / "a")
    second = build_archive(unity_checkpoint, tmp_path / "b")
    digest = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (first, second)]
    assert digest[0] == digest[1]
    names = set(zipfile.ZipFile(first).namelist())
    assert {
        "MAR-INF/MANIFEST.json",
        "torchserve_entry.py",
        "handler/service.py",
        "index_to_name.json",
        "model-config.yaml",
        "weights.pth",
    } <= names
    changed = build_archive(unity_checkpoint, tmp_path / "c", serving=ServingSettings(score_threshold=0.7))
    assert hashlib.sha256(changed.read_bytes()).hexdigest() != digest[0]
