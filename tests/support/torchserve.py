"""Looking at a local TorchServe (`synthdet serve` in the tests) through its management API."""

from __future__ import annotations

import httpx

from synthdet.local_serve import LocalServer


def worker_pids(server: LocalServer, model: str = "synthdet") -> list[int]:
    """The model's worker processes, all READY: the same list before and after means none died."""
    description = httpx.get(f"{server.management_url}/models/{model}", timeout=5).json()[0]
    assert all(worker["status"] == "READY" for worker in description["workers"]), description
    return sorted(worker["pid"] for worker in description["workers"])
