"""The tool's consoles: rich on a terminal, never a broken line when piped.

Off a terminal rich assumes 80 columns and wraps: a URL, a certificate
fingerprint or a JSON line copied from a log would then be split. So output
is never soft-wrapped, and tables get room to stay on one line. Emoji codes
are off (a fingerprint's ":AB:" is not an emoji), and data printed inside
markup goes through `escape` (an IPv6 URL's "[...]" is not a style).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

__all__ = ["escape", "make_console"]

# Columns assumed when the output is not a terminal (logs, pipes, CI).
PIPE_WIDTH = 200


def make_console(*, stderr: bool = True) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False, width=width)
