"""Every `synthdet ...` command the documents quote works as written: the command exists,
every option it uses is one of its own, and typer's parser takes the rest
(tests/support/doc_commands.py). And `synthdet` is on the PATH the way the README says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.doc_commands import REPO, documents, problems, quoted_commands


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_quoted_command_parses(document: Path) -> None:
    name = str(document.relative_to(REPO))
    wrong = [
        f"{quote.document}:{quote.line}: {quote.text.strip()}: {problem}"
        for quote in quoted_commands(document.read_text(), name)
        for problem in problems(quote)
    ]
    assert wrong == []


def test_the_quotes_are_found_in_code_blocks_spans_and_tables() -> None:
    readme = {quote.words[0] for quote in quoted_commands((REPO / "README.md").read_text())}
    assert {"serve", "deploy", "check", "smoke", "predict", "cache", "archive", "doctor"} <= readme
    deploy = quoted_commands((REPO / "docs" / "deploy.md").read_text())
    # A command continued over two lines with a backslash is read whole.
    assert any(q.words[:2] == ("deploy", "--host") and "~/models/synthdet.pth" in q.words for q in deploy)


BAD = """\
```sh
synthdet serve --model m.pth --no-such-flag     # an option serve lacks
synthdet nosuch --x
synthdet smoke URL extra
synthdet serve --once yes
$ synthdet cache wipe
synthdet cache clear --archives --serve-logs    # right
synthdet cache                                  # right: the group, named alone
```

A span: `synthdet deploy --hots H`, and in a table: | `synthdet qr URL [--pgn FILE]` |.
Not commands: `synthdet check: ok zone:`, `mypy handler serving bootstrap synthdet infra`,
`synthdet:model`, a pipeline `synthdet smoke "$URL" | tee out` (right: "$URL" may be anything).
"""


def test_a_wrong_quote_is_reported() -> None:
    quotes = quoted_commands(BAD, "BAD.md")
    found = {quote.text.split("#")[0].strip(): problems(quote) for quote in quotes}
    assert found == {
        "synthdet serve --model m.pth --no-such-flag": ["`synthdet serve` has no option --no-such-flag"],
        "synthdet nosuch --x": ["`synthdet nosuch` is not a command"],
        "synthdet smoke URL extra": ["`synthdet smoke` takes no argument 'extra'"],
        "synthdet serve --once yes": ["`synthdet serve` takes no argument 'yes'"],
        "synthdet cache wipe": ["`synthdet cache wipe` is not a command"],
        "synthdet cache clear --archives --serve-logs": [],
        "synthdet cache": [],
        "synthdet deploy --hots H": ["`synthdet deploy` has no option --hots"],
        "synthdet qr URL [--pgn FILE]": ["`synthdet qr` has no option --pgn"],
        'synthdet smoke "$URL"': [],
    }
    assert [quote.line for quote in quotes][:1] == [2]


def test_activating_the_venv_puts_synthdet_on_the_path() -> None:
    """What the README's quick start says, run as written: `source .venv/bin/activate`."""
    venv = REPO / ".venv"
    if not (venv / "bin" / "activate").is_file():
        pytest.skip("no .venv here (./dev setup makes it)")
    found = subprocess.run(
        ["bash", "-c", "source .venv/bin/activate && command -v synthdet && synthdet --help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "COLUMNS": "120"},
        timeout=120,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.splitlines()[0]) == venv / "bin" / "synthdet"
    assert "cache" in found.stdout and "serve" in found.stdout
    readme = (REPO / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start") : readme.index("## Commands")]
    assert "source .venv/bin/activate" in quick_start
