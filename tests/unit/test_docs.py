"""The project's documents stand on their own: every link they make resolves inside the repository.

A user's clone is all they have (no sibling folders), so a link that leaves the
repository or names a file that is not there is a broken document.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# [text](target) and ![alt](target); the target up to a space, ')' or '#'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]*)(?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\)")


def documents() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    return [REPO / name for name in tracked] or sorted(REPO.glob("*.md")) + sorted(REPO.glob("docs/*.md"))


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    assert "../shared" not in text and "shared/reference" not in text
    for target in LINK.findall(text):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # same page, or https:, mailto:
            continue
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{target} leaves the repository"
        assert resolved.exists(), f"{document.relative_to(REPO)} links to {target}, which does not exist"


def test_the_documents_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in documents()}
    assert {"README.md", "SECURITY.md", "docs/client-contract.md", "docs/pulumi.md"} <= names
    # The pattern sees the README's links (its screenshot included).
    targets = LINK.findall((REPO / "README.md").read_text())
    assert "docs/pulumi.md" in targets and "docs/images/viewer.jpg" in targets
