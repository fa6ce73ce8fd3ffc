"""The source cites only what a reader of the repository has: no document outside it (the
project's specification, design notes, reference tables) and no issue numbers."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "biasloss"
OUTSIDE = re.compile(r"\bSPEC\b|DESIGN\.md|STYLE\.md|\breference/|\b[Ii]ssue \d+")


def test_no_citation_of_a_document_outside_the_repository():
    found = [f"{path.relative_to(SRC)}:{n}: {line.strip()}"
             for path in sorted(SRC.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)
