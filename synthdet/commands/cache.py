"""`synthdet cache list` / `synthdet cache clear`: what synthdet keeps on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from synthdet.commands.common import console, fail
from synthdet.console import make_console


def register(app: typer.Typer) -> None:
    cache = typer.Typer(
        help="What synthdet keeps on this machine ($SYNTHDET_CACHE, default ~/.cache/synthdet), "
        "and clearing it.",
        no_args_is_help=True,
    )
    cache.command("list")(cache_list)
    cache.command("clear")(cache_clear)
    app.add_typer(cache, name="cache")


def cache_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What is in the cache: each kind, how many, how big, where."""
    from serving.archive import cache_dir
    from synthdet.cache import KINDS, WHERE, entries, human_size

    found = entries()
    root = cache_dir()
    if as_json:
        kinds = {
            kind: {
                "count": sum(1 for e in found if e.kind == kind),
                "bytes": sum(e.size for e in found if e.kind == kind),
                "in_use": sum(1 for e in found if e.kind == kind and e.in_use),
            }
            for kind in KINDS
        }
        total = sum(e.size for e in found)
        typer.echo(json.dumps({"path": str(root), "bytes": total, "kinds": kinds}))
        return
    table = Table(title=f"{root} ({human_size(sum(e.size for e in found))})")
    for name in ("kind", "where", "what"):
        table.add_column(name)
    for name in ("count", "size"):
        table.add_column(name, justify="right")
    for kind, what in KINDS.items():
        mine = [e for e in found if e.kind == kind]
        if not mine:
            continue
        busy = sum(1 for e in mine if e.in_use)
        count = f"{len(mine)}" + (f" ({busy} in use)" if busy else "")
        table.add_row(kind, WHERE[kind], what, count, human_size(sum(e.size for e in mine)))
    make_console(stderr=False).print(table)
    console.print(
        "`synthdet cache clear` removes all of synthdet's files (or --archives, --serve-logs, --demo); "
        "everything is rebuilt when needed. SYNTHDET_CACHE moves it.",
        markup=False,
    )


def cache_clear(
    everything: Annotated[bool, typer.Option("--all", help="Everything (the default).")] = False,
    archives: Annotated[bool, typer.Option("--archives", help="Model archives (.mar).")] = False,
    serve_logs: Annotated[
        bool, typer.Option("--serve-logs", help="Work folders and logs `synthdet serve` left.")
    ] = False,
    demo: Annotated[bool, typer.Option("--demo", help="The untrained demo checkpoint.")] = False,
) -> None:
    """Remove what the cache holds (all of it, or the kinds given); a running server's files stay."""
    from synthdet.cache import CLEARABLE, clear, human_size

    chosen = {kind for kind, on in (("archives", archives), ("serve-logs", serve_logs), ("demo", demo)) if on}
    if everything or not chosen:
        chosen = set(CLEARABLE)
    try:
        removed, kept = clear(chosen)
    except OSError as err:
        fail(f"cannot clear the cache: {err}")
    freed = sum(entry.size for entry in removed)
    console.print(f"removed {len(removed)} item(s), {human_size(freed)}", markup=False)
    for entry in kept:
        console.print(f"kept {entry.path}: a running synthdet serve uses it", markup=False)
