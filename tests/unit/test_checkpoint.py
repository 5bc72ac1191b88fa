"""Every checkpoint form met in practice loads; nothing pickled ever executes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from handler.checkpoint import CheckpointError, build_model, load_model, read_checkpoint


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return build_model(64).state_dict()


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    loaded = model.state_dict()
    return all(torch.equal(loaded[key], value) for key, value in state.items())


@pytest.mark.parametrize("form", ["plain", "model_key", "ddp_prefix", "ddp_in_model_key"])
def test_known_forms_load_the_same_weights(
    form: str, state_dict: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    prefixed = {f"module.{key}": value for key, value in state_dict.items()}
    obj = {
        "plain": state_dict,
        "model_key": {"model": state_dict},
        "ddp_prefix": prefixed,
        "ddp_in_model_key": {"model": prefixed, "epoch": 12},
    }[form]
    model = load_model(_save(obj, tmp_path / "c.pth"), num_classes=64)
    assert _same_weights(model, state_dict)


def test_unity_checkpoint_with_yacs_config_loads(unity_checkpoint: Path) -> None:
    state, config = read_checkpoint(unity_checkpoint)
    assert config is not None and config["MODEL"]["NUM_CLASSES"] == 64
    assert "roi_heads.box_predictor.cls_score.weight" in state
    assert not load_model(unity_checkpoint, 64).training


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"model": {"w": _Exploit(marker)}}, handle)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_checkpoint(path)
    torch_file = _save({"model": {"w": torch.zeros(1)}, "hook": _Exploit(marker)}, tmp_path / "e2.pth")
    with pytest.raises(CheckpointError):
        read_checkpoint(torch_file)
    assert not marker.exists()


def test_garbage_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt.*not a loadable PyTorch checkpoint"):
        read_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")


def test_mapping_without_tensors_reports_what_was_found(tmp_path: Path) -> None:
    path = _save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match="found keys: epoch, optimizer"):
        read_checkpoint(path)


def test_a_tensor_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        read_checkpoint(_save(torch.zeros(3), tmp_path / "t.pth"))


def test_class_count_mismatch_is_explained(state_dict: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = _save(state_dict, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="predicts 64 classes but the label map has 10"):
        load_model(path, num_classes=10)


def test_other_architecture_is_explained(tmp_path: Path) -> None:
    path = _save({"fc.weight": torch.zeros(10, 5)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a torchvision Faster R-CNN"):
        load_model(path, num_classes=64)


def test_partial_state_dict_is_explained(state_dict: dict[str, torch.Tensor], tmp_path: Path) -> None:
    partial = {key: value for key, value in state_dict.items() if not key.startswith("backbone.fpn")}
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(_save(partial, tmp_path / "p.pth"), num_classes=64)
