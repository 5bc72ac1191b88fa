"""The handler's own settings: the `handler:` section of the archive's model-config.yaml.

This dataclass is the one definition of these settings and their defaults.
`serving.settings.ServingSettings` (what users configure) takes its defaults
from here and writes this section with `to_yaml`; the handler reads it back
with `from_yaml`. The handler imports nothing from the deploy side, so the
definition lives on this side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class HandlerSettings:
    """How one worker runs the model (documented field by field in ServingSettings)."""

    score_threshold: float = 0.5
    max_image_pixels: int = 40_000_000
    precision: Precision = "fp32"
    channels_last: bool = True
    # The app's frames: 4:3 tablets (1280x960) and 16:9 phones (1280x720).
    warmup_sizes: tuple[tuple[int, int], ...] = ((1280, 960), (1280, 720))

    @classmethod
    def from_yaml(cls, config: Mapping[str, Any] | None) -> HandlerSettings:
        """Read the `handler:` section; keys it lacks keep their defaults."""
        section = dict((config or {}).get("handler") or {})
        defaults = cls()
        precision = str(section.get("precision", defaults.precision))
        if precision not in PRECISIONS:
            raise ValueError(f"handler.precision {precision!r} is not one of {PRECISIONS}")
        sizes = section.get("warmup_sizes", defaults.warmup_sizes)
        return cls(
            score_threshold=float(section.get("score_threshold", defaults.score_threshold)),
            max_image_pixels=int(section.get("max_image_pixels", defaults.max_image_pixels)),
            precision=precision,  # type: ignore[arg-type]  # checked above
            channels_last=bool(section.get("channels_last", defaults.channels_last)),
            warmup_sizes=tuple((int(width), int(height)) for width, height in sizes),
        )

    def to_yaml(self) -> dict[str, Any]:
        """The `handler:` section as plain YAML values (lists, not tuples)."""
        data = asdict(self)
        data["warmup_sizes"] = [list(size) for size in self.warmup_sizes]
        return data
