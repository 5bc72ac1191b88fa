"""Class names: a label map packaged in the archive (`index_to_name.json`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_LABEL_MAP = Path(__file__).with_name("index_to_name.json")


class LabelMapError(ValueError):
    pass


def load_label_names(path: Path = DEFAULT_LABEL_MAP) -> list[str]:
    """Read class names in index order; index 0 is the background class.

    Accepts Unity's `{"object_type_names": [...]}`, a plain list, or
    TorchServe's usual `{"0": "name", "1": ...}` mapping.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LabelMapError(f"cannot read label map {path}: {err}") from err
    names = _names_from(raw, path)
    if len(names) < 2:
        raise LabelMapError(f"label map {path} has {len(names)} entries; need background + 1 class")
    if not all(isinstance(name, str) and name for name in names):
        raise LabelMapError(f"label map {path}: every class name must be a non-empty string")
    return names


def _names_from(raw: object, path: Path) -> list[str]:
    if isinstance(raw, Mapping) and "object_type_names" in raw:
        raw = raw["object_type_names"]
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        return list(raw)
    if isinstance(raw, Mapping):
        try:
            indexed = {int(key): value for key, value in raw.items()}
        except ValueError as err:
            raise LabelMapError(f"label map {path}: keys must be class indices") from err
        if sorted(indexed) != list(range(len(indexed))):
            raise LabelMapError(f"label map {path}: indices must run 0..{len(indexed) - 1}")
        return [indexed[i] for i in range(len(indexed))]
    raise LabelMapError(
        f'label map {path}: expected {{"object_type_names": [...]}}, a list or an index mapping'
    )
