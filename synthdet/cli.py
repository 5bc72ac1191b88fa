"""`synthdet`: the command line. Thin: parse options, call a library function, print.

Every command's logic lives in a module of its own (serving.archive,
synthdet.local_serve, serving.contract, serving.qr, synthdet.doctor,
bootstrap.deploy), which the Pulumi program and the tests call directly; the
commands themselves are grouped by what they are about in synthdet/commands/.
"""

from __future__ import annotations

from typing import Any

import typer
import typer.core

from synthdet.commands import cache, cloud, deploy, doctor, endpoint, local, power


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

# To add commands: write synthdet/commands/<topic>.py with the command functions and a
# `register(app)` that calls app.command(...) for each, import it above and list it
# here. `synthdet --help` shows the commands in this order.
for _module in (local, endpoint, doctor, deploy, cloud, power, cache):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="synthdet")


if __name__ == "__main__":  # pragma: no cover
    main()
