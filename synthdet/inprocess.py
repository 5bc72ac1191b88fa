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
            metrics=_metrics_cache(name),
            model_yaml_config=config,
        )
        self.handler = SynthDetHandler()
        self.handler.initialize(self.context)

    def predict(self, image: bytes) -> list[dict[str, Any]]:
        """Detections for one image, or HandlerError with the status a client would see."""
        return self.predict_batch([image])[0]

    def handle(
        self, requests: list[dict[str, bytes]], headers: list[dict[str, str]] | None = None
    ) -> list[str]:
        """One batch through BaseHandler.handle, the context set as TorchServe's worker sets it
        (ts.service.Service.predict): request ids, per-request headers, the metrics cache."""
        from ts.context import RequestProcessor

        ids = {index: f"in-process-{index}" for index in range(len(requests))}
        self.context.request_ids = ids
        self.context.request_processor = [RequestProcessor(dict(h)) for h in headers or [{} for _ in ids]]
        self.context.metrics.request_ids = ids
        return list(self.handler.handle(requests, self.context))

    def predict_batch(self, images: list[bytes]) -> list[list[dict[str, Any]]]:
        answers = self.handle([{"body": image} for image in images])
        results = []
        for answer in answers:
            parsed = json.loads(answer)
            if isinstance(parsed, dict):
                raise HandlerError(int(parsed.get("code", 500)), str(parsed.get("error")))
            results.append(parsed)
        return results


def _metrics_cache(model_name: str) -> Any:
    """TorchServe's metrics cache with its default metrics, as a worker builds it (the
    handler records HandlerTime there; in a worker it goes to model_metrics.log)."""
    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    cache = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    cache.initialize_cache()
    cache.model_name = model_name
    return cache


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
