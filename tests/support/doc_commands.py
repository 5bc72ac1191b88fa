"""Every `synthdet ...` command the documents quote, parsed by the real command line.

Quoted means in code: a fenced block's lines (comments included: `# or: synthdet up ...`)
or an inline code span. A quote starts at `synthdet NAME` (or `.venv/bin/synthdet NAME`)
where a command can start: the start of the code, after a prompt `$ `, a comment `# `,
`: `, `(`, a quote, `&&`, `;` or `|`, with `VAR=value` assignments before it allowed.
`./dev demo ARGS` is quoted too: it runs `synthdet serve --demo-model ARGS`.

A quote is right when the command exists, every option it uses is one of that
command's, and what is left once typer's own parser has read it is at most shell
expansions (`"$URL"`, `"${args[@]}"`). Usage notation is read the way a person reads
it: `[--opt X]`, `(A | B)` and `...` are taken apart before parsing. Missing values
and required options are not errors: a quote may show part of a command.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer.main
from typer.core import TyperGroup

from synthdet.cli import app

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
START = re.compile(
    r"(?:^|(?<=\$ )|(?<=# )|(?<=: )|(?<=[(`\"'])|(?<=&& )|(?<=; )|(?<=\| ))"
    r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"  # VAR=value before the command
    r"(?:(?:\.venv/bin/)?synthdet\s+(?P<name>[a-z][a-z-]*)|\./dev\s+(?P<dev>demo))(?![\w:-])"
)
# Where a quoted command ends: a comment, another command (or `&`: in the background),
# the end of a code span, or prose in parentheses after it ("(moves on a GPU stockout)";
# usage notation such as "(--model X | --url Y)" stays).
END = re.compile(r"\s#\s|&&|;|\s\|\s|`|\s\((?!-)|\s&(?!&)")
SUBSTITUTION = re.compile(r"\$\([^()]*\)")
NOTATION = {"...", "[", "]", "(", ")", "|", "\\"}


@dataclass(frozen=True)
class Quoted:
    document: str
    line: int
    text: str
    words: tuple[str, ...]  # after `synthdet`: the command's name(s), then its arguments


def documents() -> list[Path]:
    """The project's markdown files (tracked by git; the usual ones without git)."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    return [REPO / name for name in tracked] or [REPO / "README.md", *sorted(REPO.glob("docs/*.md"))]


def code_fragments(text: str) -> list[tuple[int, str]]:
    """(line number, code) for every fenced line (continuations joined) and inline span."""
    found: list[tuple[int, str]] = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        joined, start = "", first
        for offset, line in enumerate(block.group(1).splitlines()):
            if not joined:
                start = first + offset
            joined += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
            if not line.rstrip().endswith("\\"):
                found.append((start, joined))
                joined = ""
    # Blank the fences (keeping the line count) so their backticks are not read as spans.
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in SPAN.finditer(prose):
        found.append((prose.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split())))
    return sorted(found)


def quoted_commands(text: str, document: str = "") -> list[Quoted]:
    quotes = []
    for line, code in code_fragments(text):
        code = code.replace("\\|", " ")  # a table cell's escaped "or"
        for start in START.finditer(code):
            rest = code[start.end() :]
            end = END.search(rest)
            rest = rest[: end.start()] if end else rest
            if start.group("dev"):
                words = ["serve", "--demo-model", *_words(rest)]
            else:
                words = [start.group("name"), *_words(rest)]
            quotes.append(Quoted(document, line, code[start.start() : start.end()] + rest, tuple(words)))
    return quotes


def _words(arguments: str) -> list[str]:
    """Shell words, with usage notation taken apart; `$(...)` stays one word."""
    arguments = SUBSTITUTION.sub("$SUBSTITUTION", arguments)
    try:
        words = shlex.split(arguments)
    except ValueError:
        return [arguments]  # unbalanced quotes: left whole, so that the check reports it
    bare = (word.strip("[]()") if word not in NOTATION else word for word in words)
    return [word for word in bare if word and word not in NOTATION]


def problems(quote: Quoted) -> list[str]:
    """What is wrong with a quoted command (empty: the real CLI takes it)."""
    command = typer.main.get_command(app)
    words = list(quote.words)
    path: list[str] = []
    while isinstance(command, TyperGroup):
        if path and not words:
            return []  # a group named alone (`synthdet cache`): it exists
        if not words or words[0] not in command.commands:
            return [f"`synthdet {' '.join([*path, *words[:1]])}` is not a command"]
        path.append(words.pop(0))
        command = command.commands[path[-1]]
    found: list[str] = []
    ctx = command.make_context(" ".join(path), [], resilient_parsing=True)
    known = {name for param in command.get_params(ctx) for name in (*param.opts, *param.secondary_opts)}
    for word in words:
        if word.startswith("-") and word not in ("-", "--") and word.split("=")[0] not in known:
            found.append(f"`synthdet {' '.join(path)}` has no option {word.split('=')[0]}")
    if found:
        return found
    left = command.make_context(" ".join(path), list(words), resilient_parsing=True).args
    return [
        f"`synthdet {' '.join(path)}` takes no argument {word!r}" for word in left if not word.startswith("$")
    ]
