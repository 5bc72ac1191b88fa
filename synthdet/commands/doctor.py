"""`synthdet doctor`: is this machine fit to serve, and how fast is one frame here."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from synthdet.commands.common import console
from synthdet.console import escape, make_console


def register(app: typer.Typer) -> None:
    app.command()(doctor)


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
