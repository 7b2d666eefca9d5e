"""Private modules stay private: ``ruff``'s TID251 list in pyproject.toml names every
``_*.py`` module of both packages, so importing one from outside its package (the CLI,
tests, benchmarks) fails ``ruff check``; the exceptions granted there still exist."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "eventwire": ROOT / "sdk" / "eventwire",
    "eventwire_security": ROOT / "security" / "eventwire_security",
}


def ruff_lint() -> Any:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]


def test_every_private_module_is_banned_outside_its_package() -> None:
    banned = set(ruff_lint()["flake8-tidy-imports"]["banned-api"])
    private = {
        f"{package}.{path.stem}"
        for package, directory in PACKAGES.items()
        for path in directory.glob("_*.py")
        if path.stem != "__init__"
    }
    assert "TID251" in ruff_lint()["select"]
    assert len(private) > 40
    assert sorted(private - banned) == [], "add new private modules to the banned-api list"
    assert sorted(banned - private) == [], "remove modules that are gone from the list"


def test_every_granted_exception_names_an_existing_file() -> None:
    granted = [
        pattern
        for pattern, codes in ruff_lint()["per-file-ignores"].items()
        if "TID251" in codes and "*" not in pattern
    ]
    assert len(granted) > 10
    assert [pattern for pattern in granted if not (ROOT / pattern).is_file()] == []
