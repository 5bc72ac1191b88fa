"""Imports flow one way between the rooms: handler < serving < bootstrap < synthdet, infra.

handler/ runs inside TorchServe (it sees nothing of the deploy side); serving/
is what TorchServe is handed; bootstrap/ gets a host serving; synthdet/ (the
user's tool) and infra/ (the Pulumi program) both stand on those and never on
each other. Local imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Each room and the rooms it must never import.
FORBIDDEN = {
    "handler": {"serving", "bootstrap", "synthdet", "infra"},
    "serving": {"bootstrap", "synthdet", "infra"},
    "bootstrap": {"synthdet", "infra"},
    "synthdet": {"infra"},
    "infra": {"synthdet"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_above_it(room: str) -> None:
    crossings = {
        f"{path.relative_to(REPO)} imports {package}"
        for path in sorted((REPO / room).rglob("*.py"))
        for package in imported_packages(path) & FORBIDDEN[room]
    }
    assert not crossings, sorted(crossings)


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from synthdet.qr import render_terminal\n", encoding="utf-8")
    assert imported_packages(module) == {"synthdet"}
