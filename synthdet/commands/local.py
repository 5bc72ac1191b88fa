"""Commands about a checkpoint on this machine: demo-model, archive, serve, predict."""

from __future__ import annotations

import json
import signal
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.endpoint import health_url
from serving.models import DEFAULT_MODEL_NAME, ModelSpec
from serving.settings import ServingSettings
from synthdet.commands.common import (
    LabelMapOption,
    ModelOption,
    ThresholdOption,
    console,
    fail,
    parse_models,
    print_qr,
)
from synthdet.console import escape


def register(app: typer.Typer) -> None:
    app.command("demo-model")(demo_model)
    app.command()(archive)
    app.command()(serve)
    app.command()(predict)


class Hardware(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def demo_model(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint.")] = Path(
        "synthdet_demo_untrained.pth"
    ),
    num_classes: Annotated[int, typer.Option(help="Classes including background.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write an UNTRAINED checkpoint in Unity's format, to try the whole path."""
    from synthdet.demo_model import UNTRAINED_WARNING, write_demo_checkpoint

    path = write_demo_checkpoint(out, num_classes=num_classes, seed=seed)
    console.print(f"[bold yellow]WARNING:[/] {UNTRAINED_WARNING}")
    typer.echo(str(path))


def archive(
    model: Annotated[str, typer.Option("--model", "-m", help="PATH or NAME=PATH.")],
    out: Annotated[Path, typer.Option(help="Directory for <name>.mar.")] = Path("model_store"),
    label_map: LabelMapOption = None,
    score_threshold: ThresholdOption = 0.5,
    batch_size: Annotated[
        int | None, typer.Option(help="TorchServe batch size (default: chosen for --for).")
    ] = None,
    hardware: Annotated[
        Hardware | None,
        typer.Option("--for", help="Hardware that will serve it (default: what this machine has)."),
    ] = None,
) -> None:
    """Build the TorchServe model archive (.mar): weights, handler, labels, config."""
    from serving.archive import ArchiveError, build_archive
    from synthdet.local_serve import cpu_cores, visible_gpus

    spec = parse_models([model], label_map)[0]
    given = ServingSettings(score_threshold=score_threshold)
    if batch_size is not None:
        given = ServingSettings(score_threshold=score_threshold, batch_size=batch_size)
    gpus = visible_gpus() if hardware is None else int(hardware is Hardware.gpu)
    # The batch settings follow the hardware; the workers are the serving machine's to choose.
    chosen = given.for_hardware(gpus=gpus, cpu_cores=cpu_cores())
    serving = chosen.model_copy(update={"workers": given.workers})
    with console.status(f"archiving {spec.checkpoint}"):
        try:
            path = build_archive(
                spec.checkpoint, out, model_name=spec.name, label_map=label_map, serving=serving
            )
        except ArchiveError as err:
            fail(str(err))
    console.print(f"[green]archive written[/] ({path.stat().st_size / 1e6:.0f} MB)")
    typer.echo(str(path))


def serve(
    model: ModelOption = [],  # noqa: B006 (typer needs a list default)
    demo_model: Annotated[bool, typer.Option("--demo-model", help="Serve an untrained demo model.")] = False,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 lets a phone on your network in.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for predictions and /ping.")] = 8080,
    https: Annotated[bool, typer.Option(help="Serve HTTPS with a self-signed certificate.")] = False,
    label_map: LabelMapOption = None,
    score_threshold: ThresholdOption = 0.5,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where config and logs go (default: serve-PORT in the cache, removed on a clean exit)."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to load.")] = 300,
    once: Annotated[bool, typer.Option("--once", help="Stop after the smoke request (scripts, CI).")] = False,
    plain: Annotated[bool, typer.Option(help="QR without colours.")] = False,
    keep_logs: Annotated[
        bool, typer.Option("--keep-logs", help="Keep the work folder and its logs after a clean exit too.")
    ] = False,
    idle_stop_minutes: Annotated[
        float,
        typer.Option(min=0, help="Stop after this many minutes without a prediction request (0: never)."),
    ] = 0,
    precision: Annotated[
        PrecisionChoice,
        typer.Option(
            help="fp32: exact (default). bf16: faster on a CPU with AMX or AVX512_BF16 (or a GPU), "
            "detections move: check yours (`synthdet doctor`). fp16: GPU only."
        ),
    ] = PrecisionChoice.fp32,
) -> None:
    """Serve models with TorchServe on this machine and print their URLs as QR codes."""
    from synthdet.cache import serve_folder
    from synthdet.local_serve import LocalServeConfig, ServeError

    _refuse_bf16_on_this_cpu(precision)
    if not model and not demo_model:
        fail(
            "no model given", "pass --model PATH (your trained .pth), or --demo-model to try an untrained one"
        )
    specs = parse_models(model, label_map)
    if demo_model:
        specs.append(ModelSpec(_demo_name(specs), _demo_checkpoint(), label_map))
    config = LocalServeConfig(
        models=specs,
        workdir=workdir or serve_folder(port),
        host=host,
        port=port,
        https=https,
        serving=ServingSettings(score_threshold=score_threshold, precision=precision.value),
    )
    # Explicit handlers: a `serve` started in the background by a script inherits an
    # ignored SIGINT, and Ctrl-C or `kill -INT` must still stop it and its workers.
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    stopped_cleanly = False
    try:
        _serve(config, timeout, once, plain, idle_stop_minutes)
        stopped_cleanly = True
    except ServeError as err:
        fail(str(err))
    except KeyboardInterrupt:
        console.print("stopped; TorchServe and its workers are gone")
        stopped_cleanly = True
    finally:
        # Only the cache's own folder is ours to remove; a --workdir is the user's.
        _leave_work_folder(config.workdir, remove=stopped_cleanly and not keep_logs and workdir is None)


def _refuse_bf16_on_this_cpu(precision: PrecisionChoice) -> None:
    """bf16 on a CPU without native bf16 is emulated, slower than fp32: say so before starting
    (a worker given it anyway serves fp32 and logs why)."""
    from handler.cpu_features import bf16_refusal, detect
    from synthdet.local_serve import visible_gpus

    if precision is PrecisionChoice.bf16 and visible_gpus() == 0 and (refusal := bf16_refusal(detect())):
        fail(refusal, "leave out --precision, or serve from a GPU or a CPU with AMX (synthdet doctor)")


def _serve(config: Any, timeout: float, once: bool, plain: bool, idle_stop_minutes: float = 0.0) -> None:
    """Start, announce the URLs, smoke-test, then serve until Ctrl-C (or return with --once, or
    after `idle_stop_minutes` without a prediction request)."""
    from synthdet.local_serve import lan_addresses, serving

    with (
        console.status("starting TorchServe") as status,
        serving(config, timeout, on_status=lambda text: status.update(text)) as server,
    ):
        status.stop()
        wildcard = config.host in ("0.0.0.0", "::")
        public = lan_addresses()[0] if wildcard and lan_addresses() else None
        for spec in config.models:
            url = server.prediction_url(spec.name, public)
            console.print(f"\n[bold]{spec.name}[/]: {escape(url)}")
            print_qr(url, plain)
            typer.echo(url)
        console.print(
            "Scan a QR code with the SynthDet Viewer app, or open its URL in a browser for "
            f"the live web viewer{phone_hint(config.host, config.https)}."
        )
        fingerprint = server.cert_sha256()
        if fingerprint:
            console.print(f"Certificate SHA-256: {fingerprint}", markup=False)
            console.print("[dim]self-signed: a browser asks once; compare this fingerprint to be sure[/]")
        _smoke_once(server, config.models[0].name)
        health = health_url(server.base_url(public))
        console.print(f"health: {health}   logs: {server.log_path.parent}", markup=False)
        if is_loopback(config.host):
            console.print("[dim]only this machine can connect; --host 0.0.0.0 lets a phone in[/]")
        if once:
            return
        console.print("[bold]Serving. Press Ctrl-C to stop.[/]")
        if idle_stop_minutes:
            console.print(f"(it stops after {idle_stop_minutes:g} minutes without a prediction request)")
        while server.process.poll() is None:
            if idle_stop_minutes and server.front.idle_s() >= idle_stop_minutes * 60:
                console.print(
                    f"no prediction request for {idle_stop_minutes:g} minutes (--idle-stop-minutes): "
                    "stopping",
                    markup=False,
                )
                return
            time.sleep(1)
        fail(f"TorchServe exited with status {server.process.returncode}", server.log_tail())


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def phone_hint(host: str, https: bool) -> str:
    """What a phone's browser still needs for its camera (nothing when both are given)."""
    missing = [
        flag for flag, given in (("--host 0.0.0.0", not is_loopback(host)), ("--https", https)) if not given
    ]
    return f" (a phone's browser needs {' '.join(missing)} for its camera)" if missing else ""


def _smoke_once(server: Any, model: str) -> None:
    from serving.contract import SmokeError, smoke

    try:
        result = smoke(server.prediction_url(model), timeout_s=60)
    except SmokeError as err:
        fail(f"smoke request failed: {err}", f"see {server.log_path.parent}")
    console.print(
        f"smoke request: HTTP {result.status} in {result.latency_ms:.0f} ms, "
        f"{len(result.detections)} detections"
    )
    late = result.late_warning()
    if late:
        console.print(f"[yellow]note:[/] {escape(late)} (serve phones from a GPU)")


def _leave_work_folder(folder: Path, remove: bool) -> None:
    """Remove a cleanly stopped server's folder; otherwise say where its logs are."""
    from synthdet.cache import remove_tree

    if not folder.is_dir():
        return
    if remove:
        remove_tree(folder)
        return
    logs = folder / "logs"
    console.print(f"logs kept in {logs if logs.is_dir() else folder}", markup=False)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _demo_name(specs: list[ModelSpec]) -> str:
    taken = {spec.name for spec in specs}
    return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME not in taken else "demo"


def _demo_checkpoint() -> Path:
    from synthdet.cache import demo_checkpoint
    from synthdet.demo_model import UNTRAINED_WARNING, write_demo_checkpoint

    checkpoint = demo_checkpoint()
    if not checkpoint.is_file():
        write_demo_checkpoint(checkpoint)
    console.print(f"[bold yellow]WARNING:[/] {UNTRAINED_WARNING}")
    return checkpoint


def predict(
    image: Annotated[Path, typer.Argument(help="A JPEG or PNG file.")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Run this checkpoint in-process.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Or POST to this endpoint, as the app does.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the image with boxes drawn.")] = None,
    label_map: LabelMapOption = None,
    score_threshold: ThresholdOption = 0.5,
    compact: Annotated[bool, typer.Option("--compact", help="The JSON on one line.")] = False,
) -> None:
    """Detect objects in one image and print the JSON the app would receive."""
    from serving.contract import parse_like_app

    if (model is None) == (url is None):
        fail("give exactly one of --model PATH or --url URL")
    if not image.is_file():
        fail(f"image {image} not found")
    data = image.read_bytes()
    answer = _predict_url(url, data) if url else _predict_local(model, data, label_map, score_threshold)
    # One format whichever way the answer came: the same answer prints the same bytes.
    typer.echo(json.dumps(answer) if compact else json.dumps(answer, indent=2))
    if out:
        from synthdet.drawing import draw_detections

        draw_detections(data, parse_like_app(json.dumps(answer)), out)
        console.print(f"boxes drawn to {out}", markup=False)


def _predict_url(url: str, data: bytes) -> Any:
    import httpx

    from serving.contract import post_image

    try:
        response = post_image(url, data, timeout_s=30)
    except httpx.HTTPError as err:
        fail(f"request failed: {err}")
    if not response.is_success:
        fail(f"HTTP {response.status_code}: {response.text[:300]}")
    try:
        return json.loads(response.text)
    except json.JSONDecodeError as err:
        fail(f"the answer is not JSON ({err}): {response.text[:300]}")


def _predict_local(model: Path | None, data: bytes, label_map: Path | None, threshold: float) -> Any:
    from synthdet.inprocess import HandlerError, load_in_process

    assert model is not None
    serving = ServingSettings(score_threshold=threshold, warmup_sizes=())
    with (
        console.status("loading model"),
        load_in_process(model, label_map=label_map, serving=serving) as loaded,
    ):
        try:
            return loaded.predict(data)
        except HandlerError as err:
            fail(f"the model refused the image: {err}")
