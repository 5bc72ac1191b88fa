"""A real TorchServe on this machine (CPU), shared by the tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.models import ModelSpec
from serving.settings import ServingSettings
from synthdet.local_serve import LocalServeConfig, LocalServer, free_port, serving


@pytest.fixture(scope="module")
def torchserve(
    unity_checkpoint: Path, other_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    config = LocalServeConfig(
        models=[ModelSpec("synthdet", unity_checkpoint), ModelSpec("other", other_checkpoint)],
        workdir=tmp_path_factory.mktemp("torchserve"),
        port=free_port(),
        # Batching and a queue set explicitly: on CPU `serve` would default to neither.
        serving=ServingSettings(
            max_request_bytes=2 * 1024 * 1024,
            warmup_sizes=((1280, 960),),
            batch_size=5,
            job_queue_size=32,
        ),
    )
    with serving(config, timeout_s=300) as server:
        yield server
