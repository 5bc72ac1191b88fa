"""Every serving setting, its default and its limits, in one typed model.

The same model feeds the local `synthdet serve`, the model archive's
`model-config.yaml`, the SSH deploy and the Pulumi stacks, so a user reads
one file to learn what can be tuned.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler.settings import HandlerSettings, Precision

# The handler's settings are defined once, on the handler's side.
_HANDLER = HandlerSettings()


class ServingSettings(BaseModel):
    """How TorchServe runs the model: what goes into the archive and its config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_threshold: float = Field(
        _HANDLER.score_threshold,
        ge=0.0,
        le=1.0,
        description="Detections scoring at or below this are dropped server-side "
        "(the original server used 0.5; the app filters again at 0.5-1.0).",
    )
    batch_size: int = Field(
        5,
        ge=1,
        le=64,
        description="Requests TorchServe may group into one forward pass: one phone's 5 in flight "
        "(same-sized frames share a pass; on a CPU, which gains no throughput from batching, "
        "1 gives the lowest latency).",
    )
    max_batch_delay_ms: int = Field(
        5,
        ge=0,
        le=1000,
        description="How long TorchServe waits to fill a batch; a lone frame (one phone, 5 fps) "
        "always waits this long, so it stays small next to a GPU forward pass.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Model workers; default: one per GPU, or one on CPU "
        "(`synthdet serve` on CPU: one per 8 cores, the cores split among them).",
    )
    response_timeout_s: int = Field(
        120,
        ge=1,
        le=600,
        description="TorchServe kills and restarts a worker whose batch takes longer than "
        "this; generous, because a restart (model reload) costs far more than a slow batch "
        "on a busy CPU.",
    )
    startup_timeout_s: int = Field(
        300,
        ge=10,
        le=3600,
        description="How long a worker may take to load the model and warm up.",
    )
    max_request_bytes: int = Field(
        10 * 1024 * 1024,
        ge=64 * 1024,
        le=100 * 1024 * 1024,
        description="Largest request body accepted (the app sends ~100-400 kB).",
    )
    max_image_pixels: int = Field(
        _HANDLER.max_image_pixels,
        ge=1_000_000,
        le=200_000_000,
        description="Images with more pixels are refused before decoding (decompression bombs).",
    )
    job_queue_size: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Requests queued per model before TorchServe answers 503.",
    )
    precision: Precision = Field(
        _HANDLER.precision,
        description="fp32 everywhere; fp16 (GPU) or bf16 (CPU/GPU) autocast as an opt-in.",
    )
    channels_last: bool = Field(
        _HANDLER.channels_last,
        description="Backbone in channels_last memory layout. On CPU about 1.2x faster with "
        "the same detections up to float rounding (boxes within 0.05 px, scores within 5e-4); "
        "on GPU it is applied with fp16/bf16 only, where tensor cores want it.",
    )
    warmup_sizes: tuple[tuple[int, int], ...] = Field(
        _HANDLER.warmup_sizes,
        description="(width, height) images run once at load so the first request is not slow "
        "(on a GPU every size, for cudnn; a CPU worker runs the first only).",
    )
    java_heap_mb: int = Field(
        512,
        ge=128,
        le=65536,
        description="TorchServe frontend heap (Java defaults to a quarter of RAM).",
    )

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes_are_positive(cls, sizes: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        for width, height in sizes:
            if not (16 <= width <= 4096 and 16 <= height <= 4096):
                raise ValueError(f"warm-up size {width}x{height} is outside 16..4096")
        return sizes

    def handler_settings(self) -> HandlerSettings:
        """The archive's `handler:` section (what each worker reads)."""
        return HandlerSettings(
            score_threshold=self.score_threshold,
            max_image_pixels=self.max_image_pixels,
            precision=self.precision,
            channels_last=self.channels_last,
            warmup_sizes=self.warmup_sizes,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (Pulumi state, boot.json); `model_validate` reads them back."""
        return self.model_dump(mode="json")
