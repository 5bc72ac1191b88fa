"""`synthdet`: the command line. Thin: parse options, call a library function, print.

Every command's logic lives in a module of its own (archive, local_serve,
contract, qr, doctor, deploy), which the Pulumi program and the tests call
directly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from bootstrap import cli_deploy
from bootstrap.api import ModelSpec
from bootstrap.settings import DEFAULT_MODEL_NAME, ServingSettings

app = typer.Typer(
    help="Serve a SynthDet Faster R-CNN with TorchServe, locally or on a GPU host, "
    "and hand the SynthDet Viewer app its URL as a QR code.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, highlight=False)
CACHE_DIR = Path(os.environ.get("SYNTHDET_CACHE", Path.home() / ".cache" / "synthdet"))
DEMO_CHECKPOINT = CACHE_DIR / "demo-untrained.pth"

ModelOption = Annotated[
    list[str],
    typer.Option(
        "--model",
        "-m",
        help="Checkpoint to serve: PATH (served as 'synthdet') or NAME=PATH; repeatable.",
    ),
]
ThresholdOption = Annotated[
    float, typer.Option(help="Drop detections scoring at or below this (server side).")
]
LabelMapOption = Annotated[
    Path | None,
    typer.Option(help="index_to_name.json of the model's classes (default: the 64 SynthDet ones)."),
]


def fail(message: str, hint: str = "") -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    if hint:
        console.print(f"[yellow]hint:[/] {hint}")
    raise typer.Exit(1)


def print_qr(url: str, plain: bool = False) -> None:
    from bootstrap.qr import render_terminal

    ansi = not plain and "NO_COLOR" not in os.environ
    typer.echo(render_terminal(url, ansi=ansi))


def parse_models(values: list[str], label_map: Path | None = None) -> list[ModelSpec]:
    models = []
    for value in values:
        try:
            spec = ModelSpec.parse(value)
        except ValueError as err:
            fail(str(err))
        if not spec.checkpoint.is_file():
            fail(
                f"checkpoint {spec.checkpoint} not found",
                "pass the .pth your training saved, or try `synthdet demo-model`",
            )
        models.append(ModelSpec(spec.name, spec.checkpoint, label_map))
    return models


@app.command("demo-model")
def demo_model(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint.")] = Path(
        "synthdet_demo_untrained.pth"
    ),
    num_classes: Annotated[int, typer.Option(help="Classes including background.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write an UNTRAINED checkpoint in Unity's format, to try the whole path."""
    from bootstrap.demo_model import UNTRAINED_WARNING, write_demo_checkpoint

    path = write_demo_checkpoint(out, num_classes=num_classes, seed=seed)
    console.print(f"[bold yellow]WARNING:[/] {UNTRAINED_WARNING}")
    typer.echo(str(path))


@app.command()
def archive(
    model: Annotated[str, typer.Option("--model", "-m", help="PATH or NAME=PATH.")],
    out: Annotated[Path, typer.Option(help="Directory for <name>.mar.")] = Path("model_store"),
    label_map: LabelMapOption = None,
    score_threshold: ThresholdOption = 0.5,
    batch_size: Annotated[int, typer.Option(help="TorchServe batch size.")] = 4,
) -> None:
    """Build the TorchServe model archive (.mar): weights, handler, labels, config."""
    from bootstrap.archive import ArchiveError, build_archive

    spec = parse_models([model], label_map)[0]
    serving = ServingSettings(score_threshold=score_threshold, batch_size=batch_size)
    with console.status(f"archiving {spec.checkpoint}"):
        try:
            path = build_archive(
                spec.checkpoint, out, model_name=spec.name, label_map=label_map, serving=serving
            )
        except ArchiveError as err:
            fail(str(err))
    console.print(f"[green]archive written[/] ({path.stat().st_size / 1e6:.0f} MB)")
    typer.echo(str(path))


@app.command()
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
    workdir: Annotated[Path | None, typer.Option(help="Where archives, config and logs go.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to load.")] = 300,
    once: Annotated[bool, typer.Option("--once", help="Stop after the smoke request (scripts, CI).")] = False,
    plain: Annotated[bool, typer.Option(help="QR without colours.")] = False,
) -> None:
    """Serve models with TorchServe on this machine and print their URLs as QR codes."""
    from bootstrap.contract import SmokeError, smoke
    from bootstrap.local_serve import LocalServeConfig, ServeError, lan_addresses, serving

    if not model and not demo_model:
        fail(
            "no model given", "pass --model PATH (your trained .pth), or --demo-model to try an untrained one"
        )
    specs = parse_models(model, label_map)
    if demo_model:
        specs.append(ModelSpec(_demo_name(specs), _demo_checkpoint(), label_map))
    config = LocalServeConfig(
        models=specs,
        workdir=workdir or CACHE_DIR / f"serve-{port}",
        host=host,
        port=port,
        https=https,
        serving=ServingSettings(score_threshold=score_threshold),
    )
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with (
            console.status("starting TorchServe") as status,
            serving(config, timeout, progress=lambda text: status.update(text)) as server,
        ):
            status.stop()
            public = lan_addresses()[0] if host in ("0.0.0.0", "::") and lan_addresses() else None
            for spec in specs:
                url = server.prediction_url(spec.name, public)
                console.print(f"\n[bold]{spec.name}[/]: {url}")
                print_qr(url, plain)
                typer.echo(url)
            try:
                result = smoke(server.prediction_url(specs[0].name), timeout_s=60)
                console.print(
                    f"smoke request: HTTP {result.status} in {result.latency_ms:.0f} ms, "
                    f"{len(result.detections)} detections"
                )
            except SmokeError as err:
                fail(f"smoke request failed: {err}", f"see {server.log_path.parent}")
            console.print(f"health: {server.base_url(public)}/ping   logs: {server.log_path.parent}")
            if host == "127.0.0.1":
                console.print("[dim]only this machine can connect; --host 0.0.0.0 lets a phone in[/]")
            if once:
                return
            console.print("[bold]Serving. Press Ctrl-C to stop.[/]")
            while server.process.poll() is None:
                time.sleep(1)
            fail(f"TorchServe exited with status {server.process.returncode}", server.log_tail())
    except ServeError as err:
        fail(str(err))
    except KeyboardInterrupt:
        console.print("stopped; TorchServe and its workers are gone")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _demo_name(specs: list[ModelSpec]) -> str:
    taken = {spec.name for spec in specs}
    return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME not in taken else "demo"


def _demo_checkpoint() -> Path:
    from bootstrap.demo_model import UNTRAINED_WARNING, write_demo_checkpoint

    if not DEMO_CHECKPOINT.is_file():
        write_demo_checkpoint(DEMO_CHECKPOINT)
    console.print(f"[bold yellow]WARNING:[/] {UNTRAINED_WARNING}")
    return DEMO_CHECKPOINT


@app.command()
def predict(
    image: Annotated[Path, typer.Argument(help="A JPEG or PNG file.")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Run this checkpoint in-process.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Or POST to this endpoint, as the app does.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the image with boxes drawn.")] = None,
    label_map: LabelMapOption = None,
    score_threshold: ThresholdOption = 0.5,
) -> None:
    """Detect objects in one image and print the JSON the app would receive."""
    from bootstrap.contract import parse_like_app

    if (model is None) == (url is None):
        fail("give exactly one of --model PATH or --url URL")
    if not image.is_file():
        fail(f"image {image} not found")
    data = image.read_bytes()
    body = _predict_url(url, data) if url else _predict_local(model, data, label_map, score_threshold)
    typer.echo(body)
    if out:
        from bootstrap.drawing import draw_detections

        draw_detections(data, parse_like_app(body), out)
        console.print(f"boxes drawn to {out}")


def _predict_url(url: str, data: bytes) -> str:
    import httpx

    from bootstrap.contract import post_image

    try:
        response = post_image(url, data, timeout_s=30)
    except httpx.HTTPError as err:
        fail(f"request failed: {err}")
    if not response.is_success:
        fail(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.text


def _predict_local(model: Path | None, data: bytes, label_map: Path | None, threshold: float) -> str:
    from bootstrap.inprocess import HandlerError, load_in_process

    assert model is not None
    serving = ServingSettings(score_threshold=threshold, warmup_sizes=())
    with (
        console.status("loading model"),
        load_in_process(model, label_map=label_map, serving=serving) as loaded,
    ):
        try:
            return json.dumps(loaded.predict(data), indent=2)
        except HandlerError as err:
            fail(f"the model refused the image: {err}")


@app.command()
def qr(
    url: Annotated[str, typer.Argument(help="The endpoint URL the app should store.")],
    png: Annotated[Path | None, typer.Option(help="Also write a PNG here.")] = None,
    plain: Annotated[bool, typer.Option(help="No colours (reads on light backgrounds).")] = False,
) -> None:
    """Print a QR code the SynthDet Viewer scans (the payload is the bare URL)."""
    from bootstrap.qr import write_png

    if "://" not in url:
        fail(f"{url!r} is not an absolute URL", "e.g. https://203.0.113.7/predictions/synthdet")
    print_qr(url, plain)
    if png:
        write_png(url, png)
        console.print(f"PNG written to {png}")


@app.command()
def smoke(
    url: Annotated[str, typer.Argument(help="Endpoint URL, exactly as the app stores it.")],
    image: Annotated[Path | None, typer.Option(help="JPEG to send (default: generated).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """POST an image like the app does and check the answer against its contract."""
    from bootstrap.contract import SmokeError
    from bootstrap.contract import smoke as run_smoke

    try:
        result = run_smoke(url, image=image.read_bytes() if image else None, timeout_s=timeout)
    except SmokeError as err:
        if as_json:
            typer.echo(json.dumps({"ok": False, "error": str(err)}))
        fail(str(err))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": True,
                    "status": result.status,
                    "latency_ms": round(result.latency_ms, 1),
                    "detections": len(result.detections),
                }
            )
        )
    else:
        console.print(
            f"[green]OK[/]: HTTP {result.status} in {result.latency_ms:.0f} ms, "
            f"{len(result.detections)} detections, contract satisfied"
        )


@app.command()
def bench(
    url: Annotated[str, typer.Argument(help="Endpoint URL, exactly as the app stores it.")],
    phones: Annotated[int, typer.Option(min=1, max=200, help="Simulated phones running the app.")] = 1,
    duration: Annotated[float, typer.Option(min=0.2, help="Seconds of frames to send.")] = 30.0,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds per request (the app's 2 s; CPU servers need more).")
    ] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Load an endpoint like N phones running the app: 5 frames/s, 5 in flight, 2 s timeout."""
    from bootstrap.bench import BenchConfig, run_bench
    from bootstrap.contract import _redact

    config = BenchConfig(url=url, phones=phones, duration_s=duration, timeout_s=timeout)
    with _bench_progress(duration) as on_tick:
        result = run_bench(config, on_tick)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        _print_bench(_redact(url), result)
    if result.ok == 0:
        raise typer.Exit(1)


@contextmanager
def _bench_progress(duration: float) -> Iterator[Callable[[Any, float], None]]:
    """A progress bar on stderr over the run's duration, with live counts."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=duration)

        def on_tick(tally: Any, elapsed: float) -> None:
            text = (
                f"sent {tally.sent}  ok {len(tally.latencies_ms)}  "
                f"timeouts {tally.timeouts}  errors {tally.errors}"
            )
            progress.update(task, completed=min(elapsed, duration), description=text)

        yield on_tick


def _print_bench(url: str, result: Any) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    table = Table(title=f"{url}: {result.phones} phone(s), {result.duration_s:g} s")
    for name in ("p50", "p90", "p99", "throughput", "ok", "timeouts", "errors", "dropped frames"):
        table.add_column(name, justify="right")
    table.add_row(
        ms(result.p50_ms),
        ms(result.p90_ms),
        ms(result.p99_ms),
        f"{result.throughput_rps:.2f}/s",
        str(result.ok),
        str(result.timeouts),
        str(result.errors),
        str(result.dropped_frames),
    )
    Console(highlight=False).print(table)
    for sample in result.error_samples:
        console.print(f"[red]error:[/] {sample}")


@app.command()
def doctor() -> None:
    """Check CUDA, the GPU's kernels in this torch build, the driver, Java and TorchServe."""
    from bootstrap.doctor import diagnose

    report = diagnose()
    table = Table(show_header=False, box=None)
    for check in report.checks:
        mark = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[dim]-[/]"}[check.ok]
        table.add_row(mark, check.name, check.value, f"[yellow]{check.hint}[/]" if check.hint else "")
    Console(highlight=False).print(table)
    colour = "green" if report.ready else "red"
    Console(highlight=False).print(f"[bold {colour}]{report.verdict}[/]")
    raise typer.Exit(0 if report.ready else 1)


app.command("deploy")(cli_deploy.deploy)
app.command("undeploy")(cli_deploy.undeploy)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="synthdet")


if __name__ == "__main__":  # pragma: no cover
    main()
