"""A real TorchServe, configured as deploy configures it, registers models from its store only.

TorchServe runs here as this test's user, so it could read every file involved and
write its model store: what refuses the foreign URLs below is `allowed_urls`, and
the answer says so. (On a deployed host the same is checked as root through the
management API, together with a bare directory path: tests/system/test_exposure.py.)
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from serving.models import ModelSpec
from serving.polling import poll
from serving.settings import ServingSettings
from serving.torchserve_config import render_config_properties, torchserve_env
from synthdet.local_serve import private_ports, stage_archives, stop_process_tree
from tests.support.loopback import serve_http

ALLOWED_URL_ERROR = "does not match any allowed URL(s)"


@contextlib.contextmanager
def torchserve_with_model_api(workdir: Path, store: Path) -> Iterator[str]:
    """TorchServe with deploy's config (model API on) and no model loaded; yields its management URL."""
    inference, management, metrics, *grpc = private_ports(5)
    config = workdir / "config.properties"
    config.write_text(
        render_config_properties(
            inference_address=f"http://127.0.0.1:{inference}",
            management_address=f"http://127.0.0.1:{management}",
            metrics_address=f"http://127.0.0.1:{metrics}",
            model_store=str(store),
            models={},
            serving=ServingSettings(),
            enable_model_api=True,
            grpc_ports=(grpc[0], grpc[1]),
        )
    )
    (workdir / "logs").mkdir()
    env = {**os.environ, **torchserve_env(), "LOG_LOCATION": str(workdir / "logs")}
    command = [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs"]
    command += ["--ts-config", str(config), "--model-store", str(store)]
    log = (workdir / "torchserve.out").open("wb")
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{management}"

    def answers() -> bool:
        assert process.poll() is None, (workdir / "torchserve.out").read_text()
        try:
            return httpx.get(f"{url}/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        up, _ = poll(answers, bool, timeout_s=120, every_s=0.5)
        assert up, (workdir / "torchserve.out").read_text()
        yield url
    finally:
        stop_process_tree(process, 15)
        log.close()


@contextlib.contextmanager
def web_server(root: Path) -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server on loopback serving `root`; yields (base URL, paths requested)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            requested.append(self.path)

    with serve_http(Handler) as url:
        yield url, requested


def register(management: str, url: str) -> httpx.Response:
    # initial_workers=0: registering unpacks the archive, no worker loads the weights.
    params = {"url": url, "model_name": "probe", "initial_workers": "0"}
    return httpx.post(f"{management}/models", params=params, timeout=60)


def test_only_archives_in_the_model_store_are_registered(unity_checkpoint: Path, tmp_path: Path) -> None:
    store = tmp_path / "model-store"
    built = stage_archives([ModelSpec("synthdet", unity_checkpoint)], store, ServingSettings(), None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(store / built["synthdet"], elsewhere / "copy.mar")
    os.chmod(store, 0o777)  # the server could write the store: only allowed_urls stands in the way

    with web_server(elsewhere) as (web, requested), torchserve_with_model_api(tmp_path, store) as management:
        for foreign in (
            f"file://{elsewhere}/copy.mar",
            f"FILE://{elsewhere}/copy.mar",
            f"{web}/copy.mar",
        ):
            refused = register(management, foreign)
            assert refused.status_code == 404, (foreign, refused.text)
            assert ALLOWED_URL_ERROR in refused.json()["message"], (foreign, refused.text)
        assert requested == [], "TorchServe fetched a remote archive"
        assert sorted(p.name for p in store.iterdir()) == ["synthdet.mar"]  # nothing was copied in

        # What deploy does (a bare name, looked up in the store) still works.
        loaded = register(management, "synthdet.mar")
        assert loaded.status_code == 200, loaded.text
        models = httpx.get(f"{management}/models", timeout=10).json()["models"]
        assert [m["modelName"] for m in models] == ["probe"]
