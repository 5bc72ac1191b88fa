"""Every serving setting, its default and its limits, in one typed model.

The same model feeds the local `synthdet serve`, the model archive's
`model-config.yaml`, the SSH deploy and the Pulumi stacks, so a user reads
one file to learn what can be tuned. The defaults written below are a GPU
host's; `ServingSettings.for_hardware` is the one place that fills in what
the user left unset for the hardware at hand (`synthdet serve`, `synthdet
archive`, a deploy once the host's facts are read, a replica at boot).
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
        "(same-sized frames share a pass); default on CPU: 1 (a CPU gains no throughput from "
        "batching, and 1 gives the lowest latency).",
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
        description="Model workers; default: one per GPU, or one on a CPU (its intra-op threads "
        "are the physical cores, split among the workers if you set more).",
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
        description="Requests queued per model before TorchServe answers 503; default on CPU: "
        "the workers (a CPU frame already takes longer than the app waits, so a longer queue "
        "would only answer clients that have given up).",
    )
    precision: Precision = Field(
        _HANDLER.precision,
        description="fp32 (default, exact) everywhere; opt-in: fp16 (GPU autocast) or bf16 (GPU "
        "autocast; on a CPU with AMX or AVX512_BF16 bf16 per stage, box maths fp32: 2-3x faster, "
        "but detections move beyond float rounding: check yours with benchmarks/bench_inprocess.py; "
        "a CPU without native bf16 serves fp32).",
    )
    channels_last: bool = Field(
        _HANDLER.channels_last,
        description="On CPU: the fast exact path (BatchNorm folded into the convolutions, "
        "channels_last, NCHW RoIAlign input), the same detections up to float rounding (boxes "
        "within 0.05 px, scores within 5e-4); false: the model exactly as loaded (bit-identical "
        "to the reference pipeline, slower). On GPU: channels_last with fp16/bf16 only, where "
        "tensor cores want it.",
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

    def for_hardware(self, *, gpus: int, cpu_cores: int) -> ServingSettings:
        """These settings with every value the user left unset chosen for the hardware.

        GPU: one worker per GPU, the defaults above. CPU: one worker whose
        intra-op threads are all the physical cores (one frame scales near-linearly
        with cores: 1 thread 3.56 s, 2 threads 1.74 s, so a second worker would
        only halve each frame's cores and double its latency; `cpu_cores` does
        not change the choice). A frame takes about as long as the app's 2 s
        deadline, so batching would only make every frame wait for its whole
        batch, and a queue would only answer after the deadline: one frame per
        pass, no more queued than the workers can start at once (the rest get a
        fast 503 and the app sends its next frame). Values the user set always win.
        """
        chosen: dict[str, Any] = {}
        workers = self.workers or (gpus if gpus > 0 else 1)
        chosen["workers"] = workers
        if gpus <= 0:
            chosen["batch_size"] = 1
            chosen["job_queue_size"] = workers
        unset = {name: value for name, value in chosen.items() if name not in self.model_fields_set}
        return self.model_copy(update=unset)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values of every setting; `model_validate` reads them back."""
        return self.model_dump(mode="json")

    def user_set(self) -> dict[str, Any]:
        """Plain JSON values of only what was set (Pulumi state, boot.json): whatever is
        left unset there is chosen later, where the hardware is known (`for_hardware`)."""
        return self.model_dump(mode="json", exclude_unset=True)
