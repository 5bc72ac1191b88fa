"""Load SynthDet Faster R-CNN checkpoints without executing pickled code.

Forms met in practice:
- a plain state dict;
- `{"model": state_dict}`;
- Unity's training output `{"model": state_dict, "config": <yacs CfgNode>}`;
- any of these with keys prefixed `module.` (saved from DataParallel/DDP).

Everything is read with `torch.load(weights_only=True)`. The only extra global
allowed is yacs' `CfgNode`, and it is not the real class: the name is mapped to
a stand-in whose `__new__` returns an `OrderedDict`, so a Unity checkpoint loads
without yacs installed and no constructor of a foreign class ever runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn

DDP_PREFIX = "module."
CLASS_LOGITS_KEY = "roi_heads.box_predictor.cls_score.weight"


class CheckpointError(ValueError):
    """The file is not a Faster R-CNN checkpoint we can serve; the message says why."""


class _YacsConfigNode:
    """Stand-in for `yacs.config.CfgNode` while unpickling: becomes an OrderedDict.

    The weights-only unpickler allows item assignment and `__dict__` updates on
    OrderedDicts only, which is exactly what a pickled CfgNode needs.
    """

    def __new__(cls, *args: Any) -> OrderedDict[str, Any]:  # type: ignore[misc]
        return OrderedDict()


_ALLOWED_GLOBALS: list[Any] = [(_YacsConfigNode, "yacs.config.CfgNode")]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], Mapping[str, Any] | None]:
    """Return (state dict with plain keys, training config or None)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign files
        raise CheckpointError(
            f"{path} is not a loadable PyTorch checkpoint ({type(err).__name__}: "
            f"{_first_line(err)}). Expected a state dict or Unity's "
            '{"model": state_dict, "config": ...} saved with torch.save.'
        ) from err
    state, config = _split(raw, path)
    return _strip_ddp_prefix(state), config


def _split(raw: object, path: Path) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f'{path} holds a {type(raw).__name__}, not a state dict or {{"model": state_dict}} mapping'
        )
    if "model" in raw and isinstance(raw["model"], Mapping):
        config = raw.get("config")
        return raw["model"], config if isinstance(config, Mapping) else None
    if raw and all(isinstance(value, torch.Tensor) for value in raw.values()):
        return raw, None
    found = ", ".join(sorted(str(key) for key in list(raw)[:8])) or "nothing"
    raise CheckpointError(
        f"{path} is a mapping but neither a state dict (name -> tensor) nor "
        f'{{"model": state_dict, ...}}; found keys: {found}'
    )


def _strip_ddp_prefix(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    tensors = {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if tensors and all(key.startswith(DDP_PREFIX) for key in tensors):
        return {key[len(DDP_PREFIX) :]: value for key, value in tensors.items()}
    return tensors


def classes_in(state: Mapping[str, torch.Tensor]) -> int | None:
    """Number of classes (background included) the checkpoint's head predicts."""
    logits = state.get(CLASS_LOGITS_KEY)
    return int(logits.shape[0]) if logits is not None else None


def build_model(num_classes: int, score_threshold: float = 0.05) -> FasterRCNN:
    """The torchvision architecture Unity's SynthDet training uses, untrained.

    Boxes at or below `score_threshold` are dropped inside the model: this
    changes no box above it (NMS only suppresses with higher-scoring boxes and
    the top-100 cut keeps the highest scores) and saves post-processing work.
    """
    return fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        box_score_thresh=score_threshold,
    )


def load_model(path: Path, num_classes: int, score_threshold: float = 0.05) -> FasterRCNN:
    """Build the model and fill it from `path`; errors name the file and the mismatch."""
    state, _config = read_checkpoint(path)
    found_classes = classes_in(state)
    if found_classes is None:
        raise CheckpointError(
            f"{path} has no '{CLASS_LOGITS_KEY}': not a torchvision Faster R-CNN "
            f"checkpoint (first keys: {', '.join(list(state)[:5]) or 'none'})"
        )
    if found_classes != num_classes:
        raise CheckpointError(
            f"{path} predicts {found_classes} classes but the label map has "
            f"{num_classes} names; package the label map the model was trained with"
        )
    model = build_model(num_classes, score_threshold)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match Faster R-CNN ResNet-50 FPN: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    return model.eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
