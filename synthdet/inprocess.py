"""Run the TorchServe handler inside this Python process (no server).

`synthdet predict --model`, the tests and the benchmarks use it, so they all
exercise the exact code TorchServe runs, through TorchServe's own Context.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from serving.archive import CONFIG_FILE, WEIGHTS_FILE, stage_model_dir
from serving.models import DEFAULT_MODEL_NAME
from serving.settings import ServingSettings

# TorchServe's base handler announces at import which optional backends it lacks
# (OpenVINO, onnxruntime, TensorRT): noise in a terminal, and none of them is used.
TS_IMPORT_NOISE = "ts.torch_handler.base_handler"


class HandlerError(RuntimeError):
    """The handler refused the request; `status` is what a client would get."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class InProcessModel:
    """A loaded handler plus the context TorchServe would give it."""

    def __init__(self, model_dir: Path, name: str = DEFAULT_MODEL_NAME) -> None:
        logging.getLogger(TS_IMPORT_NOISE).setLevel(logging.ERROR)
        from ts.context import Context

        from handler.service import SynthDetHandler

        config = yaml.safe_load((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        manifest = {"model": {"modelName": name, "serializedFile": WEIGHTS_FILE}}
        self.context = Context(
            name,
            str(model_dir),
            manifest,
            config.get("batchSize", 1),
            0 if torch.cuda.is_available() else None,
            "in-process",
            model_yaml_config=config,
        )
        self.handler = SynthDetHandler()
        self.handler.initialize(self.context)

    def predict(self, image: bytes) -> list[dict[str, Any]]:
        """Detections for one image, or HandlerError with the status a client would see."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: list[bytes]) -> list[list[dict[str, Any]]]:
        answers = self.handler.handle([{"body": image} for image in images], self.context)
        results = []
        for answer in answers:
            parsed = json.loads(answer)
            if isinstance(parsed, dict):
                raise HandlerError(int(parsed.get("code", 500)), str(parsed.get("error")))
            results.append(parsed)
        return results


@contextmanager
def load_in_process(
    checkpoint: Path,
    *,
    name: str = DEFAULT_MODEL_NAME,
    label_map: Path | None = None,
    serving: ServingSettings | None = None,
) -> Iterator[InProcessModel]:
    with tempfile.TemporaryDirectory(prefix="synthdet-model-") as tmp:
        model_dir = stage_model_dir(checkpoint, Path(tmp), label_map=label_map, serving=serving)
        yield InProcessModel(model_dir, name)
