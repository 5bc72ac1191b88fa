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

from serving.archive import ArchiveError, cached_archive
from serving.certs import fingerprint_sha256, make_self_signed, server_context
from serving.endpoint import base_url, prediction_url
from serving.models import ModelSpec, unique_names
from serving.polling import poll
from serving.settings import ServingSettings
from serving.torchserve_config import render_config_properties, torchserve_env
from synthdet.front import Front, FrontError

LOOPBACK = "127.0.0.1"
# In a serve's work directory while it runs: "<pid> <start time>" of the `synthdet serve`
# process, so that `synthdet cache clear` leaves a running server's folder alone.
SERVE_PID_FILE = "synthdet-serve.pid"
# Told one line about what is happening now (archiving, starting, waiting for a model).
StatusCallback = Callable[[str], None]


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
    # The self-signed certificate the front serves with --https (None: plain HTTP).
    cert_pem: bytes | None = None

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

    def wait_ready(self, timeout_s: float, on_status: StatusCallback | None = None) -> None:
        """Healthy means every model has a READY worker: /ping alone turns green too early."""
        pending = {model.name for model in self.config.models}

        def check() -> set[str]:
            if self.process.poll() is not None:
                raise ServeError(
                    f"TorchServe exited with status {self.process.returncode} while starting.\n"
                    f"Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            pending.difference_update({name for name in pending if self._model_ready(name)})
            if pending and on_status:
                on_status(f"waiting for {', '.join(sorted(pending))} to load")
            return pending

        # A TorchServe that exits while starting ends the wait at once (check raises).
        ready, _ = poll(check, lambda still_pending: not still_pending, timeout_s=timeout_s, every_s=0.5)
        if not ready:
            raise ServeError(
                f"models {sorted(pending)} not ready after {timeout_s:.0f} s.\n"
                f"Last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def _model_ready(self, name: str) -> bool:
        try:
            response = httpx.get(f"{self.management_url}/models/{name}", timeout=2.0)
            workers = response.json()[0].get("workers", []) if response.is_success else []
        except (httpx.HTTPError, ValueError, IndexError, AttributeError):
            return False
        return any(worker.get("status") == "READY" for worker in workers)

    def cert_sha256(self) -> str | None:
        """`AB:CD:...` of the served certificate, as `synthdet deploy` prints it."""
        return fingerprint_sha256(self.cert_pem) if self.cert_pem else None

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
            (self.config.workdir / SERVE_PID_FILE).unlink(missing_ok=True)


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
    """Fill what the user left unset for this machine's GPUs and cores: the same choice a
    deploy makes for a host (ServingSettings.for_hardware; on CPU batch 1, a short queue)."""
    return serving.for_hardware(gpus=visible_gpus(), cpu_cores=cpu_cores())


def default_workers() -> int:
    """Workers `synthdet serve` starts when none are set (one per GPU, else one)."""
    return local_defaults(ServingSettings()).workers or 1


def cpu_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    models: Sequence[ModelSpec], store: Path, serving: ServingSettings, on_status: StatusCallback | None
) -> dict[str, str]:
    """Each model's archive (built once per set of inputs, in the cache) linked into `store`."""
    store.mkdir(parents=True, exist_ok=True)
    archives = {}
    for model in models:
        if on_status:
            on_status(f"archiving {model.name} from {model.checkpoint} (once per checkpoint and settings)")
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


def write_pid_file(workdir: Path) -> None:
    """Mark `workdir` as in use by this process (see SERVE_PID_FILE)."""
    me = psutil.Process()
    (workdir / SERVE_PID_FILE).write_text(f"{me.pid} {me.create_time()}\n", encoding="utf-8")


def in_use(workdir: Path) -> bool:
    """Whether a `synthdet serve` that is still running works in `workdir`."""
    try:
        pid, started = (workdir / SERVE_PID_FILE).read_text(encoding="utf-8").split()
        # The start time tells a live server from a new process that got the same pid.
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
    except (OSError, ValueError, psutil.Error):
        return False


def start_local_server(config: LocalServeConfig, on_status: StatusCallback | None = None) -> LocalServer:
    """Archive the models, start TorchServe on loopback and the front on the chosen port."""
    if not config.models:
        raise ServeError("no model to serve: pass --model PATH (or --demo-model)")
    try:
        unique_names(tuple(config.models))
    except ValueError as err:
        raise ServeError(str(err)) from err
    workdir = config.workdir
    if in_use(workdir):
        # Its config, links and logs are that server's: touching them would break it.
        raise ServeError(
            f"another synthdet serve is running in {workdir}: stop it, or pick another --port or --workdir"
        )
    config = replace(config, serving=local_defaults(config.serving))
    for sub in ("tmp", "logs"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    write_pid_file(workdir)
    store = workdir / "model-store"
    archives = stage_archives(config.models, store, config.serving, on_status)
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
    tls = _write_certificate(config) if config.https else None
    front = Front(
        upstream=f"http://{LOOPBACK}:{inference_port}",
        models=[model.name for model in config.models],
        host=config.host,
        port=config.port,
        max_body_bytes=config.serving.max_request_bytes,
        response_timeout_s=config.serving.response_timeout_s,
        ssl_context=server_context(*tls) if tls else None,
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
    if on_status:
        on_status(f"starting TorchServe (logs: {workdir / 'logs'})")
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
    management_url = f"http://{LOOPBACK}:{management_port}"
    cert_pem = tls[0].read_bytes() if tls else None
    return LocalServer(config, process, front, management_url, log_path, cert_pem)


@contextlib.contextmanager
def serving(
    config: LocalServeConfig, timeout_s: float = 300, on_status: StatusCallback | None = None
) -> Iterator[LocalServer]:
    """Start, wait until ready, yield, and always stop."""
    server = start_local_server(config, on_status)
    try:
        server.wait_ready(timeout_s, on_status)
        yield server
    finally:
        server.stop()
