"""`synthdet`: the command line. Thin: parse options, call a library function, print.

Every command's logic lives in a module of its own (serving.archive,
synthdet.local_serve, serving.contract, synthdet.qr, synthdet.doctor,
bootstrap.deploy), which the Pulumi program and the tests call directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.core
from rich.table import Table

from serving.archive import cache_dir
from serving.endpoint import health_url, redact
from serving.models import DEFAULT_MODEL_NAME, ModelSpec
from serving.settings import ServingSettings
from synthdet import deploy_commands
from synthdet.console import escape, make_console


def _flags_show_no_type() -> None:
    """typer's rich help prints a flag's type (`--once <bool>`), as if it took a value;
    its plain help, like click's, does not. Make the rich help agree."""
    shown = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else shown(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()
app = typer.Typer(
    help="Serve a SynthDet Faster R-CNN with TorchServe, locally or on a GPU host, "
    "and hand the SynthDet Viewer app its URL as a QR code.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = make_console()
# Where `synthdet qr --stack` finds Pulumi.yaml: this checkout.
PROJECT_DIR = Path(__file__).resolve().parents[1]

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
    console.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}")
    raise typer.Exit(1)


def print_qr(url: str, plain: bool = False) -> None:
    from synthdet.qr import render_terminal

    ansi = not plain and "NO_COLOR" not in os.environ
    typer.echo(render_terminal(url, ansi=ansi))


def parse_models(values: list[str], label_map: Path | None = None) -> list[ModelSpec]:
    models = []
    for value in values:
        try:
            spec = ModelSpec.parse(value, label_map)
        except ValueError as err:
            fail(str(err))
        if not spec.checkpoint.is_file():
            fail(
                f"checkpoint {spec.checkpoint} not found",
                "pass the .pth your training saved, or try `synthdet demo-model`",
            )
        models.append(spec)
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
    from synthdet.demo_model import UNTRAINED_WARNING, write_demo_checkpoint

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
    from serving.archive import ArchiveError, build_archive

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
    from serving.contract import SmokeError, smoke
    from synthdet.local_serve import LocalServeConfig, ServeError, lan_addresses, serving

    if not model and not demo_model:
        fail(
            "no model given", "pass --model PATH (your trained .pth), or --demo-model to try an untrained one"
        )
    specs = parse_models(model, label_map)
    if demo_model:
        specs.append(ModelSpec(_demo_name(specs), _demo_checkpoint(), label_map))
    config = LocalServeConfig(
        models=specs,
        workdir=workdir or cache_dir() / f"serve-{port}",
        host=host,
        port=port,
        https=https,
        serving=ServingSettings(score_threshold=score_threshold),
    )
    # Explicit handlers: a `serve` started in the background by a script inherits an
    # ignored SIGINT, and Ctrl-C or `kill -INT` must still stop it and its workers.
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
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
                console.print(f"\n[bold]{spec.name}[/]: {escape(url)}")
                print_qr(url, plain)
                typer.echo(url)
            console.print(
                "Scan a QR code with the SynthDet Viewer app, or open its URL in a browser for "
                "the live web viewer (a phone's browser needs --host 0.0.0.0 --https for its camera)."
            )
            try:
                result = smoke(server.prediction_url(specs[0].name), timeout_s=60)
                console.print(
                    f"smoke request: HTTP {result.status} in {result.latency_ms:.0f} ms, "
                    f"{len(result.detections)} detections"
                )
            except SmokeError as err:
                fail(f"smoke request failed: {err}", f"see {server.log_path.parent}")
            health = health_url(server.base_url(public))
            console.print(f"health: {health}   logs: {server.log_path.parent}", markup=False)
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
    from synthdet.demo_model import UNTRAINED_WARNING, write_demo_checkpoint

    checkpoint = cache_dir() / "demo-untrained.pth"
    if not checkpoint.is_file():
        write_demo_checkpoint(checkpoint)
    console.print(f"[bold yellow]WARNING:[/] {UNTRAINED_WARNING}")
    return checkpoint


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
    from serving.contract import parse_like_app

    if (model is None) == (url is None):
        fail("give exactly one of --model PATH or --url URL")
    if not image.is_file():
        fail(f"image {image} not found")
    data = image.read_bytes()
    body = _predict_url(url, data) if url else _predict_local(model, data, label_map, score_threshold)
    typer.echo(body)
    if out:
        from synthdet.drawing import draw_detections

        draw_detections(data, parse_like_app(body), out)
        console.print(f"boxes drawn to {out}", markup=False)


def _predict_url(url: str, data: bytes) -> str:
    import httpx

    from serving.contract import post_image

    try:
        response = post_image(url, data, timeout_s=30)
    except httpx.HTTPError as err:
        fail(f"request failed: {err}")
    if not response.is_success:
        fail(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.text


def _predict_local(model: Path | None, data: bytes, label_map: Path | None, threshold: float) -> str:
    from synthdet.inprocess import HandlerError, load_in_process

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
    url: Annotated[str | None, typer.Argument(help="The endpoint URL the app should store.")] = None,
    stack: Annotated[
        str | None, typer.Option(help="Or read the endpoint from this Pulumi stack's outputs.")
    ] = None,
    png: Annotated[Path | None, typer.Option(help="Also write a PNG here.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="No colours (reads on light backgrounds).")] = False,
) -> None:
    """Print a QR code the SynthDet Viewer scans (the payload is the bare URL)."""
    from synthdet.qr import write_png

    if (url is None) == (stack is None):
        fail("give exactly one of URL or --stack STACK")
    if stack is not None:
        url = _stack_endpoint(stack)
    assert url is not None
    if "://" not in url:
        fail(f"{url!r} is not an absolute URL", "e.g. https://203.0.113.7/predictions/synthdet")
    print_qr(url, plain)
    if png:
        write_png(url, png)
        console.print(f"PNG written to {png}", markup=False)


def _stack_endpoint(stack: str) -> str:
    """The `endpoint` output of a Pulumi stack (a secret: read with --show-secrets, never logged)."""
    command = ["pulumi", "stack", "output", "endpoint", "--show-secrets", "--stack", stack]
    try:
        result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        fail("the pulumi CLI is not installed", "https://www.pulumi.com/docs/install/")
    if result.returncode != 0:
        fail(f"`{' '.join(command)}` failed: {result.stderr.strip()}", "run `pulumi up --stack STACK` first")
    return result.stdout.strip()


@app.command()
def smoke(
    url: Annotated[str, typer.Argument(help="Endpoint URL, exactly as the app stores it.")],
    image: Annotated[Path | None, typer.Option(help="JPEG to send (default: generated).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """POST an image like the app does and check the answer against its contract."""
    from serving.contract import SmokeError
    from serving.contract import smoke as run_smoke

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
    from synthdet.bench import BenchConfig, run_bench

    config = BenchConfig(url=url, phones=phones, duration_s=duration, timeout_s=timeout)
    with _bench_progress(duration) as on_tick:
        result = run_bench(config, on_tick)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        _print_bench(redact(url), result)
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
                f"sent {tally.sent}  ok {len(tally.latencies_ms)}  refused {tally.refused}  "
                f"timeouts {tally.timeouts}  errors {tally.errors}"
            )
            progress.update(task, completed=min(elapsed, duration), description=text)

        yield on_tick


def _print_bench(url: str, result: Any) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    table = Table(title=f"{url}: {result.phones} phone(s), {result.duration_s:g} s")
    columns = ("p50", "p90", "p99", "throughput", "ok", "refused", "timeouts", "errors", "dropped frames")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_row(
        ms(result.p50_ms),
        ms(result.p90_ms),
        ms(result.p99_ms),
        f"{result.throughput_rps:.2f}/s",
        str(result.ok),
        str(result.refused),
        str(result.timeouts),
        str(result.errors),
        str(result.dropped_frames),
    )
    make_console(stderr=False).print(table)
    if result.refused:
        console.print(
            f"[yellow]refused {result.refused}[/]: the server was busy and said so at once (503/429), "
            "as designed: the app drops such a frame and sends its next one."
        )
        for sample in result.refusal_samples:
            console.print(f"  server said: {sample}", markup=False)
    if result.timeouts:
        console.print(
            f"[yellow]timeouts {result.timeouts}[/]: no answer within {result.timeout_s:g} s "
            "(the app's deadline is 2 s; a CPU server needs --timeout of several seconds)."
        )
    for sample in result.error_samples:
        console.print(f"[red]error:[/] {escape(sample)}")


@app.command()
def doctor(
    quick: Annotated[bool, typer.Option("--quick", help="Skip timing one frame (about 10 s).")] = False,
) -> None:
    """Check CUDA, the GPU's kernels, the driver, Java and TorchServe; time one frame here."""
    from synthdet.doctor import diagnose

    with console.status("checking (and timing one 1280x960 frame through the handler)"):
        report = diagnose(measure=not quick)
    table = Table(show_header=False, box=None)
    for check in report.checks:
        mark = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[dim]-[/]"}[check.ok]
        hint = f"[yellow]{escape(check.hint)}[/]" if check.hint else ""
        table.add_row(mark, escape(check.name), escape(check.value), hint)
    out = make_console(stderr=False)
    out.print(table)
    colour = "green" if report.ready else "red"
    out.print(f"[bold {colour}]{report.verdict}[/]")
    raise typer.Exit(0 if report.ready else 1)


app.command("deploy")(deploy_commands.deploy)
app.command("undeploy")(deploy_commands.undeploy)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="synthdet")


if __name__ == "__main__":  # pragma: no cover
    main()
