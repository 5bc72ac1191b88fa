"""QR codes the SynthDet Viewer scans: the payload is the bare endpoint URL.

The endpoint's representation for phones, printed by `synthdet` and by the
Pulumi program (`infra/`), so it lives below both.

Terminal rendering draws two modules per character cell with half blocks and
sets both colours explicitly (black on white), so the code reads the same on
dark and light terminal themes.
"""

from __future__ import annotations

from pathlib import Path

import qrcode
from qrcode.constants import ERROR_CORRECT_M

UPPER_HALF = "\u2580"  # ▀
LOWER_HALF = "\u2584"  # ▄
FULL_BLOCK = "\u2588"  # █
# ANSI: foreground black, background white, then reset.
BLACK_ON_WHITE = "\x1b[30;47m"
RESET = "\x1b[0m"
TERMINAL_BORDER = 2  # modules of quiet zone; phones read 2 fine on a screen


def qr_matrix(url: str, border: int = TERMINAL_BORDER) -> list[list[bool]]:
    """Rows of modules, True = dark, quiet zone included."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=border)
    code.add_data(url)
    code.make(fit=True)
    return [list(row) for row in code.get_matrix()]


def render_terminal(url: str, ansi: bool = True) -> str:
    """The QR as text, two module rows per line.

    With `ansi`, light modules are drawn in white on any theme. Without it
    (logs, Pulumi outputs), dark modules are drawn as blocks: scan it on a
    light background.
    """
    matrix = qr_matrix(url)
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))
    lines = []
    for top, bottom in zip(matrix[0::2], matrix[1::2], strict=True):
        cells = "".join(_cell(upper, lower) for upper, lower in zip(top, bottom, strict=True))
        lines.append(f"{BLACK_ON_WHITE}{cells}{RESET}" if ansi else cells)
    return "\n".join(lines)


def _cell(upper_dark: bool, lower_dark: bool) -> str:
    """Dark modules are drawn in the foreground colour (black with `ansi`)."""
    if upper_dark and lower_dark:
        return FULL_BLOCK
    if upper_dark:
        return UPPER_HALF
    return LOWER_HALF if lower_dark else " "


def write_png(url: str, path: Path, box_size: int = 10) -> None:
    """A PNG with the standard 4-module quiet zone."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=4, box_size=box_size)
    code.add_data(url)
    code.make(fit=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    code.make_image(fill_color="black", back_color="white").save(str(path))
