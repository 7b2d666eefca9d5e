"""SECURITY.md names the tests that run each attack: every one of them exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a cell cites `path::test`, then `::test` for more tests of the same file
_CITATION = re.compile(r"`(tests/[\w/]+\.py)?::(test_\w+)`")


def _tests_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def _citations(text: str) -> list[tuple[str, str]]:
    cited: list[tuple[str, str]] = []
    for line in text.splitlines():
        current = None
        for match in _CITATION.finditer(line):
            current = match.group(1) or current
            assert current is not None, f"`::{match.group(2)}` without a file before it: {line}"
            cited.append((current, match.group(2)))
    return cited


def test_every_cited_test_exists() -> None:
    cited = _citations((ROOT / "SECURITY.md").read_text())
    assert len(cited) > 80
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not (ROOT / path).is_file() or name not in _tests_of(ROOT / path)
    ]
    assert missing == []
