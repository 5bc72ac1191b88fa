"""Commands about a cloud stack before and during `pulumi up`: check, up."""

from __future__ import annotations

import subprocess
from typing import Annotated

import typer

from synthdet.cloud_up import (
    CheckFailed,
    ExistingInZone,
    NoCapacity,
    ZonePlan,
    check_command,
    error_summary,
    missing_packages,
    outputs_summary,
    run_check,
    select_stack,
    up_with_failover,
)
from synthdet.commands.common import StackOption, console, fail
from synthdet.commands.endpoint import PROJECT_DIR
from synthdet.console import escape


def register(app: typer.Typer) -> None:
    app.command()(check)
    app.command()(up)


def check(
    stack: StackOption,
    in_use_ok: Annotated[
        bool,
        typer.Option(
            "--in-use-ok", help="Quota already in use only warns (a deployed stack's own VM uses some)."
        ),
    ] = False,
) -> None:
    """Before `pulumi up`: credentials, APIs, GPU quota, zones, image, networks, SSH; one line each."""
    _need_infra_extra()
    try:
        done = subprocess.run(check_command(stack, in_use_ok=in_use_ok), cwd=PROJECT_DIR, check=False)
    except OSError as exc:
        fail(f"cannot run the check: {exc}")
    raise typer.Exit(done.returncode)


def up(
    stack: StackOption,
    skip_check: Annotated[
        bool, typer.Option("--skip-check", help="Do not run `synthdet check` first (the program still does).")
    ] = False,
    move_existing: Annotated[
        bool,
        typer.Option(
            "--move-existing",
            help=(
                "When the stack's own VM cannot (re)start in its full zone, move it: replaces the VM "
                "and its boot disk in the next zone offering the GPU (same static IP, URL and QR code; "
                "the host is deployed anew). Without it, nothing that existed is ever destroyed."
            ),
        ),
    ] = False,
) -> None:
    """`pulumi up` that moves to the next zone offering the GPU when one has no capacity."""
    _need_infra_extra()
    try:
        plan = _plan(stack, skip_check)
        pulumi_stack = select_stack(stack, PROJECT_DIR)
    except CheckFailed as exc:
        fail(str(exc))
    from pulumi.automation import CommandError

    try:
        result, zone = up_with_failover(
            pulumi_stack,
            plan,
            say=lambda line: console.print(f"[bold yellow]synthdet up:[/] {escape(line)}"),
            on_output=lambda line: typer.echo(line),
            move_existing=move_existing,
        )
    except ExistingInZone as exc:
        fail(exc.line(stack))
    except NoCapacity as exc:
        fail(str(exc))
    except CommandError as exc:
        fail(f"pulumi up failed: {error_summary(str(exc))}", "the log above has the details")
    where = f" in {zone}" if zone else ""
    summary = outputs_summary(result)
    console.print(
        f"[bold green]up[/]{escape(where)}{escape(': ' + summary if summary else '')}; "
        f"the QR code: synthdet qr --stack {escape(stack)}"
    )


def _need_infra_extra() -> None:
    missing = missing_packages()
    if missing:
        fail(
            f"{', '.join(missing)} not installed here (the `infra` extra)",
            "`.venv/bin/pip install -e '.[infra]'` (docs/pulumi.md, Prerequisites)",
        )


def _plan(stack: str, skip_check: bool) -> ZonePlan:
    if skip_check:
        return ZonePlan(key="", zone="", zones=[])
    result = run_check(stack, PROJECT_DIR)
    for line in result.lines:
        typer.echo(line)
    typer.echo(result.summary)
    if result.blocked:
        raise typer.Exit(1)
    return ZonePlan(key=result.zone_key, zone=result.zone, zones=result.zones)
