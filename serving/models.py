"""Which models are served: a name (a URL path segment) and a checkpoint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "synthdet"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_model_name(name: str) -> str:
    """Model names become URL path segments and file names: keep them plain."""
    if not MODEL_NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '_' or '-' "
            "(at most 64 characters, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve at /predictions/<name>."""

    name: str
    checkpoint: Path
    label_map: Path | None = None

    def __post_init__(self) -> None:
        check_model_name(self.name)

    @classmethod
    def parse(cls, value: str, label_map: Path | None = None) -> ModelSpec:
        """`NAME=PATH` or a bare `PATH` (served as `synthdet`)."""
        name, sep, path = value.partition("=")
        if sep and name and "/" not in name:
            return cls(name=name, checkpoint=Path(path).expanduser(), label_map=label_map)
        return cls(name=DEFAULT_MODEL_NAME, checkpoint=Path(value).expanduser(), label_map=label_map)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoint": str(self.checkpoint),
            "label_map": str(self.label_map) if self.label_map else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        label_map = data.get("label_map")
        return cls(
            name=str(data["name"]),
            checkpoint=Path(data["checkpoint"]),
            label_map=Path(label_map) if label_map else None,
        )


def unique_names(models: list[ModelSpec] | tuple[ModelSpec, ...]) -> None:
    """Two models under one name would serve one and silently drop the other."""
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
