"""TorchServe handler for a SynthDet Faster R-CNN (ResNet-50 FPN).

initialize: load the checkpoint named in the archive's manifest, the label map
            and the `handler:` settings of model-config.yaml; warm up.
preprocess: each request's bytes -> RGB tensor, or a RequestError for that request.
inference:  one forward pass per group of same-sized images, no autograd.
postprocess: the JSON array the SynthDet Viewer parses, or a JSON error with
            its 4xx status set for that request only.

TorchServe's own BaseHandler.handle runs the last three (and times them as
the HandlerTime metric).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
import platform
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from ts.torch_handler.base_handler import BaseHandler

from handler.checkpoint import load_model
from handler.cpu_features import CpuFeatures, CpuPlan, choose_precision, detect
from handler.cpu_paths import prepare_for_cpu, stage_autocast
from handler.detections import Detection, to_contract, to_json
from handler.errors import CorruptImage, InferenceFailed, RequestError
from handler.imaging import decode_image, jpeg_for_gpu, request_bytes, to_tensor
from handler.labels import DEFAULT_LABEL_MAP, load_label_names
from handler.settings import HandlerSettings

logger = logging.getLogger(__name__)

LABEL_MAP_FILE = "index_to_name.json"
JSON = "application/json"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Resident memory above the warm-up's by this factor is returned to the OS after a batch.
MEMORY_HEADROOM = 1.2


class SynthDetHandler(BaseHandler):  # type: ignore[misc]
    """One instance per TorchServe worker."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = HandlerSettings()
        self.names: list[str] = []
        self.memory_ceiling: float | None = None  # set by the warm-up, else by the first batch
        self.cpu: CpuFeatures | None = None  # on a CPU worker: what the CPU has
        self.cpu_plan: CpuPlan | None = None  # and the precision chosen for it, with why

    # -- initialize ---------------------------------------------------------
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir") or ".")
        self.settings = HandlerSettings.from_yaml(getattr(context, "model_yaml_config", None))
        self.device = self._pick_device(properties.get("gpu_id"))
        _keep_freed_memory()
        if self.device.type == "cpu":
            self.cpu = detect()
            self.cpu_plan = choose_precision(self.settings.precision, self.cpu)
            _share_cores(getattr(context, "model_yaml_config", None), self.cpu.physical_cores)
        label_map = model_dir / LABEL_MAP_FILE
        self.names = load_label_names(label_map if label_map.exists() else DEFAULT_LABEL_MAP)
        checkpoint = model_dir / self._serialized_file(context)
        started = time.perf_counter()
        model = load_model(checkpoint, len(self.names), self.settings.score_threshold)
        self.model = model.to(self.device)
        if self.cpu_plan is not None:
            self._prepare_for_cpu(self.cpu_plan)
        elif self._wants_channels_last():
            self.model.backbone.to(memory_format=torch.channels_last)
        self.gpu_jpeg = False
        if self.device.type == "cuda":
            self._tune_for_gpu()
        if self._warm_up():
            self.memory_ceiling = _resident_bytes() * MEMORY_HEADROOM
        self.initialized = True
        logger.info(
            "SynthDet model %s loaded on %s with %d classes in %.1f s "
            "(precision %s, %d torch threads, JPEG decode on %s)",
            checkpoint.name,
            self.device,
            len(self.names),
            time.perf_counter() - started,
            self.precision,
            torch.get_num_threads(),
            "GPU" if self.gpu_jpeg else "CPU",
        )
        if self.cpu is not None and self.cpu_plan is not None:
            # The path a CPU worker chose and why, with what the CPU has: one line to read.
            log = logger.warning if self.cpu_plan.warning else logger.info
            log("CPU path: %s; CPU: %s", self.cpu_plan.reason, self.cpu.describe())

    @property
    def precision(self) -> str:
        """The precision this worker runs (a CPU may fall back from the setting)."""
        return self.cpu_plan.precision if self.cpu_plan is not None else self.settings.precision

    def _prepare_for_cpu(self, plan: CpuPlan) -> None:
        """BatchNorm folded, channels_last, NCHW RoIAlign input (handler/cpu_paths.py):
        the same detections as the reference up to float rounding (matched box by box in
        the tests), faster. `channels_last: false` leaves the model exactly as loaded
        (bit-identical to the reference); bf16 then only adds its per-stage autocast.
        """
        if self.settings.channels_last:
            prepare_for_cpu(self.model, plan.precision)
        elif plan.precision == "bf16":
            stage_autocast(self.model, torch.bfloat16)

    def _wants_channels_last(self) -> bool:
        """channels_last changes only the order of float additions inside convolutions.

        On CPU it is part of the prepared path (_prepare_for_cpu). On GPU tensor
        cores read it natively with fp16/bf16; fp32 keeps cuDNN's default layout.
        """
        if not self.settings.channels_last:
            return False
        return self.device.type == "cpu" or self.settings.precision in ("fp16", "bf16")

    def _tune_for_gpu(self) -> None:
        """cuDNN picks the fastest conv algorithm per input shape once (the app sends few)."""
        torch.backends.cudnn.benchmark = True
        self.gpu_jpeg = _gpu_jpeg_available(self.device)

    @staticmethod
    def _pick_device(gpu_id: object) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        return torch.device("cpu")

    @staticmethod
    def _serialized_file(context: Any) -> str:
        manifest = getattr(context, "manifest", None) or {}
        return str(manifest.get("model", {}).get("serializedFile") or "model.pth")

    def _warm_up(self) -> bool:
        """Run the sizes the app sends once, so the first real request is not slow."""
        sizes = self.settings.warmup_sizes
        if self.device.type == "cpu":
            # Every image is resized to 800 px, so later sizes cost the same again and
            # gain nothing on CPU; one pass sets the memory high-water mark below.
            sizes = sizes[:1]
        for width, height in sizes:
            self._forward([torch.zeros(3, height, width)])
            if self.gpu_jpeg:  # nvJPEG's first call sets up its state: not on a request's clock
                self._decode_on_gpu(_blank_jpeg(width, height))
        return bool(sizes)

    # -- the request path -----------------------------------------------------
    # BaseHandler.handle runs preprocess -> inference -> postprocess and adds what
    # TorchServe expects of every handler: the HandlerTime metric, the profiler
    # (ENABLE_TORCH_PROFILER) and describe. A bad request travels through the three
    # as a RequestError value, so it gets its own 4xx and its batch is untouched.
    def _is_describe(self) -> bool:
        """TorchServe's describe job (management API, `?customized=true`) always runs alone.

        BaseHandler reads the header of a batch's first request only: a client's own
        `describe` header on a prediction batched with others must not turn the
        whole batch's answer into one description.
        """
        return bool(super()._is_describe()) and len(self.context.request_ids or {}) == 1

    def _is_explain(self) -> bool:
        """No explanations (nothing answers them): every request is a prediction.

        Also decided by the batch's first request alone, so it could change the
        answer of every other request in the batch.
        """
        return False

    def describe_handle(self) -> str:
        """What this worker serves, for `GET /models/NAME?customized=true` (a JSON object)."""
        return json.dumps(
            {
                "classes": self.names[1:],  # index 0 is the background class
                "device": str(self.device),
                "gpu_jpeg_decode": self.gpu_jpeg,
                "channels_last": self._wants_channels_last(),
                "precision": self.precision,
                "cpu": self._describe_cpu(),
                "settings": self.settings.to_yaml(),
            }
        )

    def _describe_cpu(self) -> dict[str, Any] | None:
        if self.cpu is None or self.cpu_plan is None:
            return None
        return {
            "model": self.cpu.model,
            "flags": list(self.cpu.reported),
            "physical_cores": self.cpu.physical_cores,
            "torch_threads": torch.get_num_threads(),
            "path": self.cpu_plan.reason,
        }

    def preprocess(self, data: Sequence[Mapping[str, Any]]) -> list[torch.Tensor | RequestError]:
        return [self._decode(request) for request in data]

    def _decode(self, request: Mapping[str, Any]) -> torch.Tensor | RequestError:
        try:
            raw = request_bytes(request)
            if self.gpu_jpeg and (decoded := self._decode_on_gpu(raw)) is not None:
                return decoded
            image = decode_image(raw, self.settings.max_image_pixels)
        except RequestError as err:
            return err
        except Exception as err:  # a decoder bug must cost one request, not the worker
            logger.exception("unexpected error while decoding a request")
            return CorruptImage(f"image could not be decoded: {type(err).__name__}")
        return to_tensor(image)

    def _decode_on_gpu(self, raw: bytes) -> torch.Tensor | None:
        """nvJPEG for the app's plain RGB JPEGs; None sends anything else (or a failure) to PIL.

        The PIL path then applies every check and answers bad input with its 4xx.
        """
        if not jpeg_for_gpu(raw, self.settings.max_image_pixels):
            return None
        try:
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            pixels = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None
        return pixels.to(torch.float32).div_(255)

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
        self._release_unusual_memory()
        return results

    def _release_unusual_memory(self) -> None:
        """Freed memory is kept for the next pass (see _keep_freed_memory), but not
        what an unusually large batch needed: past the warm-up's high-water mark, return it."""
        if self.memory_ceiling is None:
            self.memory_ceiling = _resident_bytes() * MEMORY_HEADROOM
        elif _resident_bytes() > self.memory_ceiling:
            _trim_heap()

    def _forward(self, images: list[torch.Tensor]) -> list[Any]:
        with torch.inference_mode(), self._autocast():
            batch = [image.to(self.device, non_blocking=True) for image in images]
            return list(self.model(batch))

    def _autocast(self) -> AbstractContextManager[Any]:
        """GPU: fp16/bf16 autocast around the whole pass. A CPU's bf16 is per stage,
        inside the model (handler/cpu_paths.py): no context here."""
        if self.device.type != "cuda":
            return nullcontext()
        if self.settings.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.settings.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
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


def _keep_freed_memory() -> None:
    """Let glibc reuse freed activations instead of returning them to the OS.

    A CPU forward pass allocates ~2 GB of short-lived activations. By default
    glibc serves each large block with a fresh mmap and unmaps it when freed,
    so every pass page-faults it all in again (~480k faults, ~0.9 s of kernel
    time per 1280x960 frame on 2 cores). Keeping freed memory in the heap costs
    nothing in peak RSS (the peak is reached by the first pass anyway) and
    changes no arithmetic. Not glibc (musl, macOS): nothing to do.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    most = 2**31 - 1  # mallopt takes an int
    libc.mallopt(M_MMAP_THRESHOLD, most)  # large blocks come from the heap, not mmap
    libc.mallopt(M_TRIM_THRESHOLD, most)  # and freed memory stays there for the next pass


def _resident_bytes() -> int:
    """This process's resident memory (0 where /proc is missing: never trims)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    if platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _share_cores(config: Mapping[str, Any] | None, physical_cores: int) -> None:
    """Intra-op threads = this worker's share of the physical cores.

    One frame scales near-linearly with cores (measured on 2 cores: 1 thread
    3.56 s, 2 threads 1.74 s), and a hyperthread shares its core's vector units,
    so threads beyond the physical cores add contention, not speed. TorchServe
    sets no thread count (only its torchrun mode does), so without this every
    worker would start one thread per logical CPU. An operator's OMP_NUM_THREADS wins.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    workers = int((config or {}).get("minWorkers") or 1)
    torch.set_num_threads(max(1, physical_cores // workers))


def _gpu_jpeg_available(device: torch.device) -> bool:
    """Whether this torchvision decodes JPEG on the GPU (builds without nvJPEG raise)."""
    try:
        data = torch.frombuffer(bytearray(_blank_jpeg(16, 16)), dtype=torch.uint8)
        decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, NotImplementedError) as err:
        logger.info("JPEG decode stays on the CPU: %s", err)
        return False
    return True


def _blank_jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()
