"""What the commands share: the console, error exit, QR printing, the model and stack options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from serving.models import ModelSpec
from synthdet.console import escape, make_console

console = make_console()

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
StackOption = Annotated[str, typer.Option("--stack", help="The Pulumi stack (stacks/Pulumi.NAME.yaml).")]


def tilde(path: Path) -> str:
    """`path` with the home folder written as ~, as people type it."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) and path != home else str(path)


def fail(message: str, hint: str = "") -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}")
    raise typer.Exit(1)


def print_qr(url: str, plain: bool = False) -> None:
    from serving.qr import render_terminal

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
