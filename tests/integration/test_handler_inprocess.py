"""The handler TorchServe runs, driven in-process through TorchServe's own Context."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serving.archive import build_archive
from serving.settings import ServingSettings
from synthdet.inprocess import HandlerError, InProcessModel, load_in_process
from tests.support.images import bomb_png, encode, make_test_jpeg, photo
from tests.support.reference import assert_same_detections, load_reference_model, reference_detections

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
    answers = model.handler.handle([{"body": good}, {"body": b"garbage"}, {"data": good}], model.context)
    assert json.loads(answers[0]) == json.loads(answers[2]) == model.predict(good)
    assert json.loads(answers[1])["code"] == 415


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
