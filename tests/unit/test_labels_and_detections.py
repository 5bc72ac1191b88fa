"""Label maps and the exact JSON shape the app parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from handler.detections import to_contract, to_json
from handler.labels import DEFAULT_LABEL_MAP, LabelMapError, load_label_names
from serving.contract import ContractError, check_in_frame, parse_like_app

# sha256 of the 64 class names (one a line, in index order) of the SynthDet Viewer's own
# index_to_name.json: the app colours and names boxes by these, so they must not drift.
APP_CLASS_NAMES_SHA256 = "187fa18ba5bc8ad12917a4144a51a2e63643ebd06b2e6698bb3e9db0bddeae81"


def test_default_map_is_the_64_synthdet_classes() -> None:
    names = load_label_names()
    assert len(names) == 64 and names[0] == "NONE"
    assert names[5] == "cereal_cheerios_honeynut"


def test_default_map_is_exactly_the_apps_class_list() -> None:
    import hashlib

    names = load_label_names(DEFAULT_LABEL_MAP)
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == APP_CLASS_NAMES_SHA256


@pytest.mark.parametrize(
    "content", [["bg", "a", "b"], {"object_type_names": ["bg", "a", "b"]}, {"0": "bg", "1": "a", "2": "b"}]
)
def test_label_map_forms(content: object, tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(content))
    assert load_label_names(path) == ["bg", "a", "b"]


@pytest.mark.parametrize("content", ['{"0": "bg", "2": "b"}', "[]", '["bg", 3]', "{not json"])
def test_bad_label_maps_are_explained(content: str, tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(content)
    with pytest.raises(LabelMapError, match="map.json"):
        load_label_names(path)


def _output(scores: list[float]) -> dict[str, torch.Tensor]:
    count = len(scores)
    boxes = torch.tensor([[10.0 + i, 20.0, 110.5 + i, 220.25] for i in range(count)]).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.arange(1, count + 1), "scores": torch.tensor(scores)}


def test_contract_shape_threshold_and_order() -> None:
    names = load_label_names()
    detections = to_contract(_output([0.6, 0.5, 0.99, 0.2]), names, 0.5)
    assert [d["score"] for d in detections] == [0.99, 0.6]  # 0.5 itself is dropped, as before
    first = detections[0]
    assert first == {
        "label": names[3],
        "label_id": 3,
        "box": {"top_left": {"x": 12.0, "y": 20.0}, "bottom_right": {"x": 112.5, "y": 220.25}},
        "score": 0.99,
    }
    parsed = parse_like_app(to_json(detections))
    assert parsed[0].label == names[3] and parsed[0].bottom_right.x == 112.5


def test_empty_result_is_an_empty_array() -> None:
    body = to_json(to_contract(_output([]), load_label_names(), 0.5))
    assert body == "[]"
    assert parse_like_app(body) == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"status": "Healthy"}', "no '\\['"),
        ('{"objects": []}', "not an array"),
        ("[{]", "not a JSON array"),
        ('[{"label": 5, "label_id": 5, "score": 0.9, "box": {}}]', "class name"),
        ('[{"label": "a", "label_id": 1.5, "score": 0.9, "box": {}}]', "integer"),
        ('[{"label": "a", "label_id": 1, "score": "0.9", "box": {}}]', "score"),
        ('[{"label": "a", "label_id": 1, "score": 0.9, "box": {"top_left": {"x": 1}}}]', "top_left"),
    ],
)
def test_answers_the_app_would_drop_are_rejected(body: str, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        parse_like_app(body)


def test_boxes_outside_the_sent_image_are_rejected() -> None:
    detections = parse_like_app(
        '[{"label": "a", "label_id": 1, "score": 0.9,'
        ' "box": {"top_left": {"x": 0.1, "y": 0.1}, "bottom_right": {"x": 1300, "y": 2}}}]'
    )
    with pytest.raises(ContractError, match="outside"):
        check_in_frame(detections, 1280, 960)
