"""Run TorchServe on this machine with our handler: `synthdet serve`.

TorchServe listens on loopback only (inference, management, metrics, gRPC on
free ports); `synthdet.front.Front` faces the chosen address and port. TorchServe
is started in its own process session so that stopping it (Ctrl-C) takes the
Java frontend and every Python worker with it. Each server gets its own work
directory, including TMPDIR, because TorchServe keeps its pid file in the temp
dir and would otherwise refuse a second instance on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil
import tenacity

from serving.archive import ArchiveError, cached_archive
from serving.certs import make_self_signed, server_context
from serving.endpoint import base_url, prediction_url
from serving.models import ModelSpec, unique_names
from serving.settings import ServingSettings
from serving.torchserve_config import render_config_properties, torchserve_env
from synthdet.front import Front, FrontError

LOOPBACK = "127.0.0.1"
CORES_PER_CPU_WORKER = 8
Progress = Callable[[str], None]


class ServeError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalServeConfig:
    models: Sequence[ModelSpec]
    workdir: Path
    host: str = LOOPBACK
    port: int = 8080
    https: bool = False
    serving: ServingSettings = field(default_factory=ServingSettings)


@dataclass
class LocalServer:
    """A running TorchServe behind its front; use `serving()` or `start_local_server`."""

    config: LocalServeConfig
    process: subprocess.Popen[bytes]
    front: Front
    management_url: str
    log_path: Path

    @property
    def scheme(self) -> str:
        return "https" if self.config.https else "http"

    def base_url(self, address: str | None = None) -> str:
        host = address or self.config.host
        if host in ("0.0.0.0", "::"):
            host = LOOPBACK
        return base_url(host, self.config.port, self.scheme)

    def prediction_url(self, model: str, address: str | None = None) -> str:
        return prediction_url(self.base_url(address), model)

    def wait_ready(self, timeout_s: float, progress: Progress | None = None) -> None:
        """Healthy means every model has a READY worker: /ping alone turns green too early."""
        pending = {model.name for model in self.config.models}

        def check() -> set[str]:
            if self.process.poll() is not None:
                raise ServeError(
                    f"TorchServe exited with status {self.process.returncode} while starting.\n"
                    f"Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            pending.difference_update({name for name in pending if self._model_ready(name)})
            if pending and progress:
                progress(f"waiting for {', '.join(sorted(pending))} to load")
            return pending

        try:
            tenacity.Retrying(
                stop=tenacity.stop_after_delay(timeout_s),
                wait=tenacity.wait_fixed(0.5),
                retry=tenacity.retry_if_result(bool),
            )(check)
        except tenacity.RetryError:
            raise ServeError(
                f"models {sorted(pending)} not ready after {timeout_s:.0f} s.\n"
                f"Last lines of {self.log_path}:\n{self.log_tail()}"
            ) from None

    def _model_ready(self, name: str) -> bool:
        try:
            response = httpx.get(f"{self.management_url}/models/{name}", timeout=2.0)
            workers = response.json()[0].get("workers", []) if response.is_success else []
        except (httpx.HTTPError, ValueError, IndexError, AttributeError):
            return False
        return any(worker.get("status") == "READY" for worker in workers)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the front, TorchServe and every process it started; nothing is left behind."""
        try:
            self.front.stop()
        finally:
            stop_process_tree(self.process, timeout_s)


def stop_process_tree(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(family, timeout=timeout_s)
    for straggler in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            straggler.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def local_defaults(serving: ServingSettings) -> ServingSettings:
    """Fill what the user left unset from this machine's cores and GPUs.

    On a CPU one frame takes longer than the app's 2 s deadline: batching would
    only make every frame wait for its whole batch, and a queue would only
    answer after the deadline. So, unless set explicitly: one frame per pass,
    and no more queued than the workers can start at once (the rest get a fast
    503 and the app simply sends its next one).
    """
    workers = serving.workers or default_workers()
    update: dict[str, int] = {"workers": workers}
    if not visible_gpus():
        if "batch_size" not in serving.model_fields_set:
            update["batch_size"] = 1
        if "job_queue_size" not in serving.model_fields_set:
            update["job_queue_size"] = workers
    return serving.model_copy(update=update)


def default_workers() -> int:
    """One worker per GPU; on CPU one per 8 cores (the handler splits the cores among them).

    Past about 8 threads one forward pass gains little from more cores, so a second
    worker serving a second phone's frame at the same time is the better use (an
    estimate: only the 2-core case, one worker, was measured here).
    """
    gpus = visible_gpus()
    if gpus:
        return gpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // CORES_PER_CPU_WORKER)


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, without importing torch (seconds of start-up)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() not in ("", "-1")])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Where the kernel takes the local ports of outgoing connections (Linux's default).
DEFAULT_EPHEMERAL_PORTS = (32768, 60999)
LOWEST_PRIVATE_PORT = 20000


def ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_PORTS


def private_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports for TorchServe's own listeners, below the ephemeral range.

    TorchServe binds them seconds after they are chosen. A port from the ephemeral range
    (what binding port 0 gives) can be taken in between by any outgoing connection, this
    process's own readiness polls included; one below it cannot.
    """
    low, _ = ephemeral_ports()
    if low - LOWEST_PRIVATE_PORT < 10 * count:  # an unusual range: let the kernel choose
        return [free_port(host) for _ in range(count)]
    candidates = random.SystemRandom().sample(range(LOWEST_PRIVATE_PORT, low), 50 * count)
    chosen: list[int] = []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # somebody listens there
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise ServeError(f"no {count} free ports between {LOWEST_PRIVATE_PORT} and {low} on {host}")


def lan_addresses() -> list[str]:
    """IPv4 addresses a phone on the same network could use to reach this machine."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                found.append(address.address)
    return sorted(set(found))


def stage_archives(
    models: Sequence[ModelSpec], store: Path, serving: ServingSettings, progress: Progress | None
) -> dict[str, str]:
    """Each model's archive (built once per set of inputs, in the cache) linked into `store`."""
    store.mkdir(parents=True, exist_ok=True)
    archives = {}
    for model in models:
        if progress:
            progress(f"archiving {model.name} from {model.checkpoint} (once per checkpoint and settings)")
        try:
            built = cached_archive(model, serving)
        except ArchiveError as err:
            raise ServeError(str(err)) from err
        link = store / f"{model.name}.mar"
        link.unlink(missing_ok=True)
        link.symlink_to(built)
        archives[model.name] = link.name
    return archives


def _write_certificate(config: LocalServeConfig) -> tuple[Path, Path]:
    names = [config.host] if config.host not in ("0.0.0.0", "::") else []
    names += ["localhost", LOOPBACK, *lan_addresses()]
    cert_pem, key_pem = make_self_signed(list(dict.fromkeys(names)))
    tls = config.workdir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    cert, key = tls / "cert.pem", tls / "key.pem"
    cert.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    return cert, key


def start_local_server(config: LocalServeConfig, progress: Progress | None = None) -> LocalServer:
    """Archive the models, start TorchServe on loopback and the front on the chosen port."""
    if not config.models:
        raise ServeError("no model to serve: pass --model PATH (or --demo-model)")
    try:
        unique_names(tuple(config.models))
    except ValueError as err:
        raise ServeError(str(err)) from err
    workdir = config.workdir
    config = replace(config, serving=local_defaults(config.serving))
    for sub in ("tmp", "logs"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    store = workdir / "model-store"
    archives = stage_archives(config.models, store, config.serving, progress)
    inference_port, management_port, metrics_port, *grpc_ports = private_ports(5)
    properties = render_config_properties(
        inference_address=f"http://{LOOPBACK}:{inference_port}",
        management_address=f"http://{LOOPBACK}:{management_port}",
        metrics_address=f"http://{LOOPBACK}:{metrics_port}",
        model_store=str(store),
        models=archives,
        serving=config.serving,
        grpc_ports=(grpc_ports[0], grpc_ports[1]),
    )
    config_path = workdir / "config.properties"
    config_path.write_text(properties, encoding="utf-8")
    front = Front(
        upstream=f"http://{LOOPBACK}:{inference_port}",
        models=[model.name for model in config.models],
        host=config.host,
        port=config.port,
        max_body_bytes=config.serving.max_request_bytes,
        response_timeout_s=config.serving.response_timeout_s,
        ssl_context=server_context(*_write_certificate(config)) if config.https else None,
    )
    try:
        front.start()  # first: a taken port fails before TorchServe is started
    except FrontError as err:
        raise ServeError(str(err)) from err
    log_path = workdir / "logs" / "torchserve.out"
    env = {
        **os.environ,
        **torchserve_env(),
        "TMPDIR": str(workdir / "tmp"),
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    command = [
        sys.executable,
        "-m",
        "ts.model_server",
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        str(config_path),
        "--model-store",
        str(store),
    ]
    if progress:
        progress(f"starting TorchServe (logs: {workdir / 'logs'})")
    try:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    except OSError as err:
        front.stop()
        raise ServeError(f"cannot start TorchServe ({err})") from err
    return LocalServer(config, process, front, f"http://{LOOPBACK}:{management_port}", log_path)


@contextlib.contextmanager
def serving(
    config: LocalServeConfig, timeout_s: float = 300, progress: Progress | None = None
) -> Iterator[LocalServer]:
    """Start, wait until ready, yield, and always stop."""
    server = start_local_server(config, progress)
    try:
        server.wait_ready(timeout_s, progress)
        yield server
    finally:
        server.stop()
