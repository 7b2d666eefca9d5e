"""The one atomic-write helper: whole files or none, exact modes, and an exclusive mode that
never replaces anything (a file, a symlink, a dangling symlink)."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from eventwire_security._files import write_atomic

if TYPE_CHECKING:
    from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("wanted", [0o600, 0o644])
def test_writes_the_bytes_with_exactly_the_mode(tmp_path: Path, umask: int, wanted: int) -> None:
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "f", b"one", mode=wanted)
    finally:
        os.umask(old)
    assert ((tmp_path / "f").read_bytes(), mode(tmp_path / "f")) == (b"one", wanted)
    assert os.listdir(tmp_path) == ["f"]  # no temporary file left


def test_replaces_a_file_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old contents")
    before = os.open(target, os.O_RDONLY)  # a reader that opened the old file
    try:
        write_atomic(target, b"new", mode=0o600)
        assert os.read(before, 100) == b"old contents"  # it keeps the whole old file
    finally:
        os.close(before)
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_exclusive_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new", exclusive=True)
    assert target.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["f"]


def test_exclusive_writes_a_new_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "f", b"first", exclusive=True)
    assert ((tmp_path / "f").read_bytes(), mode(tmp_path / "f")) == (b"first", 0o600)


def test_exclusive_never_follows_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "dir").mkdir()
    link = tmp_path / "dir" / "f"
    link.symlink_to(elsewhere)  # dangling: following it would create `elsewhere`
    with pytest.raises(FileExistsError):
        write_atomic(link, b"x", exclusive=True)
    assert not elsewhere.exists()
    elsewhere.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_atomic(link, b"x", exclusive=True)
    assert elsewhere.read_bytes() == b"precious"
    assert os.listdir(tmp_path / "dir") == ["f"]


def test_replacing_a_symlink_replaces_the_link_not_its_target(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"precious")
    link = tmp_path / "f"
    link.symlink_to(elsewhere)
    write_atomic(link, b"new")
    assert (elsewhere.read_bytes(), link.is_symlink(), link.read_bytes()) == (
        b"precious",
        False,
        b"new",
    )


def test_writes_into_an_open_directory(tmp_path: Path) -> None:
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_atomic("f", b"here", dir_fd=directory, exclusive=True)
        with pytest.raises(ValueError, match="is not a file name"):
            write_atomic("sub/f", b"x", dir_fd=directory)
    finally:
        os.close(directory)
    assert (tmp_path / "f").read_bytes() == b"here"


def test_a_failed_write_leaves_neither_file_nor_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    for exclusive, name in ((False, "f"), (True, "g")):
        with pytest.raises(OSError, match="No space"):
            write_atomic(tmp_path / name, b"new", exclusive=exclusive)
    assert os.listdir(tmp_path) == ["f"]
    assert (tmp_path / "f").read_bytes() == b"old"


def test_only_bytes_are_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        write_atomic(tmp_path / "f", "text")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
