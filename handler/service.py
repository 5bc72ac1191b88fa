"""TorchServe handler for a SynthDet Faster R-CNN (ResNet-50 FPN).

initialize: load the checkpoint named in the archive's manifest, the label map
            and the `handler:` settings of model-config.yaml; warm up.
preprocess: each request's bytes -> RGB tensor, or a RequestError for that request.
inference:  one forward pass per group of same-sized images, no autograd.
postprocess: the JSON array the SynthDet Viewer parses, or a JSON error with
            its 4xx status set for that request only.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.checkpoint import load_model
from handler.detections import Detection, to_contract, to_json
from handler.errors import CorruptImage, InferenceFailed, RequestError
from handler.imaging import decode_image, request_bytes, to_tensor
from handler.labels import DEFAULT_LABEL_MAP, load_label_names

logger = logging.getLogger(__name__)

LABEL_MAP_FILE = "index_to_name.json"
JSON = "application/json"


@dataclass(frozen=True)
class HandlerSettings:
    """The `handler:` section of model-config.yaml (written by `synthdet archive`)."""

    score_threshold: float = 0.5
    max_image_pixels: int = 40_000_000
    precision: str = "fp32"
    warmup_sizes: tuple[tuple[int, int], ...] = ((1280, 960),)

    @classmethod
    def from_yaml(cls, config: Mapping[str, Any] | None) -> HandlerSettings:
        section = dict((config or {}).get("handler") or {})
        sizes = section.get("warmup_sizes", cls.warmup_sizes)
        return cls(
            score_threshold=float(section.get("score_threshold", cls.score_threshold)),
            max_image_pixels=int(section.get("max_image_pixels", cls.max_image_pixels)),
            precision=str(section.get("precision", cls.precision)),
            warmup_sizes=tuple((int(w), int(h)) for w, h in sizes),
        )


class SynthDetHandler(BaseHandler):  # type: ignore[misc]
    """One instance per TorchServe worker."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = HandlerSettings()
        self.names: list[str] = []

    # -- initialize ---------------------------------------------------------
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir") or ".")
        self.settings = HandlerSettings.from_yaml(getattr(context, "model_yaml_config", None))
        self.device = self._pick_device(properties.get("gpu_id"))
        label_map = model_dir / LABEL_MAP_FILE
        self.names = load_label_names(label_map if label_map.exists() else DEFAULT_LABEL_MAP)
        checkpoint = model_dir / self._serialized_file(context)
        started = time.perf_counter()
        model = load_model(checkpoint, len(self.names), self.settings.score_threshold)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            # Conv algorithms are picked per input shape once, then reused.
            torch.backends.cudnn.benchmark = True
        self._warm_up()
        self.initialized = True
        logger.info(
            "SynthDet model %s loaded on %s with %d classes in %.1f s (precision %s)",
            checkpoint.name,
            self.device,
            len(self.names),
            time.perf_counter() - started,
            self.settings.precision,
        )

    @staticmethod
    def _pick_device(gpu_id: object) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        return torch.device("cpu")

    @staticmethod
    def _serialized_file(context: Any) -> str:
        manifest = getattr(context, "manifest", None) or {}
        return str(manifest.get("model", {}).get("serializedFile") or "model.pth")

    def _warm_up(self) -> None:
        """Run the sizes the app sends once, so the first real request is not slow."""
        sizes = self.settings.warmup_sizes
        if self.device.type == "cpu":
            sizes = sizes[:1]  # on CPU later shapes gain little; keep start-up short
        for width, height in sizes:
            self._forward([torch.zeros(3, height, width)])

    # -- the request path -----------------------------------------------------
    def handle(self, data: list[Mapping[str, Any]], context: Any) -> list[str]:
        self.context = context
        return self.postprocess(self.inference(self.preprocess(data)))

    def preprocess(self, data: Sequence[Mapping[str, Any]]) -> list[torch.Tensor | RequestError]:
        return [self._decode(request) for request in data]

    def _decode(self, request: Mapping[str, Any]) -> torch.Tensor | RequestError:
        try:
            image = decode_image(request_bytes(request), self.settings.max_image_pixels)
        except RequestError as err:
            return err
        except Exception as err:  # a decoder bug must cost one request, not the worker
            logger.exception("unexpected error while decoding a request")
            return CorruptImage(f"image could not be decoded: {type(err).__name__}")
        return to_tensor(image)

    def inference(
        self, data: Sequence[torch.Tensor | RequestError], *args: Any, **kwargs: Any
    ) -> list[dict[str, torch.Tensor] | RequestError]:
        """Same-sized images share a forward pass; different sizes run apart.

        Batching pads images to a common size, which would let one client's
        frame change another's detections; grouping by size keeps every answer
        identical to a batch of one.
        """
        results: list[dict[str, torch.Tensor] | RequestError] = [
            item if isinstance(item, RequestError) else {} for item in data
        ]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, item in enumerate(data):
            if isinstance(item, torch.Tensor):
                groups[tuple(item.shape)].append(index)
        for indices in groups.values():
            batch = [data[index] for index in indices]
            try:
                outputs = self._forward(batch)  # type: ignore[arg-type]
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                outputs = [InferenceFailed("GPU out of memory; retry shortly", 503)] * len(batch)
            except Exception as err:  # keep the worker alive; answer with a JSON 500
                logger.exception("inference failed for a batch of %d", len(batch))
                outputs = [InferenceFailed(f"inference failed: {type(err).__name__}")] * len(batch)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results

    def _forward(self, images: list[torch.Tensor]) -> list[Any]:
        with torch.inference_mode(), self._autocast():
            batch = [image.to(self.device, non_blocking=True) for image in images]
            return list(self.model(batch))

    def _autocast(self) -> AbstractContextManager[Any]:
        precision = self.settings.precision
        if precision == "fp16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def postprocess(self, data: Sequence[Mapping[str, torch.Tensor] | RequestError]) -> list[str]:
        return [self._respond(index, item) for index, item in enumerate(data)]

    def _respond(self, index: int, item: Mapping[str, torch.Tensor] | RequestError) -> str:
        if isinstance(item, RequestError):
            self._set_status(index, item.status)
            return item.to_json()
        detections: list[Detection] = to_contract(item, self.names, self.settings.score_threshold)
        self._set_content_type(index)
        return to_json(detections)

    def _set_status(self, index: int, status: int) -> None:
        if self.context is not None and getattr(self.context, "request_processor", None):
            phrase = HTTPStatus(status).phrase
            self.context.set_response_status(code=status, phrase=phrase, idx=index)
        self._set_content_type(index)

    def _set_content_type(self, index: int) -> None:
        if self.context is not None and getattr(self.context, "request_processor", None):
            self.context.set_response_content_type(index, JSON)
