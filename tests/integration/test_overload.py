"""Overload on `synthdet serve` (no nginx): TorchServe's bounded queue refuses fast.

One phone offers 3x what a CPU worker can do for 60 s (tests/support/overload.py).
TorchServe runs with `job_queue_size=1`: one frame waits while one is computed,
everything beyond gets TorchServe's immediate 503, which the front of `synthdet
serve` turns into a JSON "busy, retry" with Retry-After (as nginx does on a
deployed host: tests/system/test_overload.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serving.contract import smoke
from serving.models import ModelSpec
from serving.settings import ServingSettings
from synthdet.local_serve import LocalServeConfig, LocalServer, free_port, serving
from tests.support.overload import assert_refused_fast_and_nothing_late, run_overload
from tests.support.torchserve import worker_pids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_queue_server(
    unity_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    config = LocalServeConfig(
        models=[ModelSpec("synthdet", unity_checkpoint)],
        workdir=tmp_path_factory.mktemp("overload"),
        port=free_port(),
        serving=ServingSettings(job_queue_size=1, workers=1, warmup_sizes=((1280, 960),)),
    )
    with serving(config, timeout_s=300) as server:
        yield server


def _rss_mb(pid: int) -> float:
    """Resident memory of TorchServe and its workers."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def test_three_times_capacity_for_a_minute_is_refused_fast_never_late(
    small_queue_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = small_queue_server.prediction_url("synthdet")
    pids = worker_pids(small_queue_server)
    before_mb = _rss_mb(small_queue_server.process.pid)
    run = run_overload(url, monkeypatch)
    after_mb = _rss_mb(small_queue_server.process.pid)
    print(f"\noverload (local TorchServe): {run.summary()}; memory {before_mb:.0f} -> {after_mb:.0f} MiB")
    # One frame computed, one queued (job_queue_size=1): everything else is refused.
    assert_refused_fast_and_nothing_late(run, admitted=2, retry_after=True)
    busy = run.result.refusal_samples
    # The same answer as nginx's on a deployed host (serving/error_answers.py, tests/system).
    assert busy == ("HTTP 503: the server is busy or restarting; retry in 1 s",), busy
    assert after_mb < before_mb * 1.25 + 200, "memory grew under overload"
    # Healthy afterwards, with the same worker.
    smoke(url, timeout_s=60)
    assert worker_pids(small_queue_server) == pids
