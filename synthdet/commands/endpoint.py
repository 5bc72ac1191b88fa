"""Commands about an endpoint URL: qr, smoke, bench."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from serving.contract import APP_TIMEOUT_S
from serving.endpoint import redact
from synthdet.commands.common import console, fail, print_qr
from synthdet.console import escape, make_console

# Where `synthdet qr --stack` finds Pulumi.yaml: this checkout.
PROJECT_DIR = Path(__file__).resolve().parents[2]


def register(app: typer.Typer) -> None:
    app.command()(qr)
    app.command()(smoke)
    app.command()(bench)


def qr(
    url: Annotated[str | None, typer.Argument(help="The endpoint URL the app should store.")] = None,
    stack: Annotated[
        str | None, typer.Option(help="Or read the endpoint from this Pulumi stack's outputs.")
    ] = None,
    png: Annotated[Path | None, typer.Option(help="Also write a PNG here.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="No colours (reads on light backgrounds).")] = False,
) -> None:
    """Print a QR code the SynthDet Viewer scans (the payload is the bare URL)."""
    from serving.qr import write_png

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


def smoke(
    url: Annotated[str, typer.Argument(help="Endpoint URL, exactly as the app stores it.")],
    image: Annotated[Path | None, typer.Option(help="JPEG to send (default: generated).")] = None,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for the answer (past the app's deadline, to measure a late one)."),
    ] = 10.0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (exit 1) on an answer later than the app's deadline.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """POST an image like the app does and check the answer against its contract and deadline."""
    from serving.contract import APP_TIMEOUT_S, SmokeError
    from serving.contract import smoke as run_smoke

    try:
        result = run_smoke(url, image=image.read_bytes() if image else None, timeout_s=timeout)
    except SmokeError as err:
        if as_json:
            typer.echo(json.dumps({"ok": False, "error": str(err)}))
        fail(str(err))
    late = result.late_warning()
    passed = late is None or not strict
    if as_json:
        answer = {
            "ok": passed,
            "status": result.status,
            "latency_ms": round(result.latency_ms, 1),
            "deadline_ms": round(APP_TIMEOUT_S * 1000),
            "in_time": result.in_time,
            "detections": len(result.detections),
        }
        typer.echo(json.dumps(answer | ({"warning": late} if late else {})))
    summary = f"HTTP {result.status} in {result.latency_ms:.0f} ms, {len(result.detections)} detections"
    if late is None:
        if not as_json:
            console.print(
                f"[green]OK[/]: {summary}, within the app's {APP_TIMEOUT_S:g} s deadline, contract satisfied"
            )
        return
    if strict:
        fail(f"{summary}: {late}", "serve from a GPU, or run without --strict to only warn")
    console.print(f"[bold yellow]LATE[/]: {summary}, contract satisfied, but {escape(late)}")
    console.print("[yellow]hint:[/] serve from a GPU, near the phones; --strict makes a late answer fail")


def bench(
    url: Annotated[str, typer.Argument(help="Endpoint URL, exactly as the app stores it.")],
    phones: Annotated[int, typer.Option(min=1, max=200, help="Simulated phones running the app.")] = 1,
    duration: Annotated[float, typer.Option(min=0.2, help="Seconds of frames to send.")] = 30.0,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds per request (the app's 2 s; CPU servers need more).")
    ] = APP_TIMEOUT_S,
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
            f"(the app's deadline is {APP_TIMEOUT_S:g} s; a CPU server needs --timeout of several seconds)."
        )
    for sample in result.error_samples:
        console.print(f"[red]error:[/] {escape(sample)}")
