"""One way to write a file atomically: a reader sees the old file or the new one, whole.

The bytes go to a temporary file beside the target (created with O_EXCL, never following a
symlink), which is fsynced and then moved into place: :func:`os.replace`, or with
``exclusive`` a hard link that fails if anything (even a dangling symlink) is at the target,
so an existing file is never overwritten. The directory is fsynced last, so that the new
entry survives a crash too. A partial file is never visible under the target name.

Errors are the :class:`OSError` of the failing call (:class:`FileExistsError` for an
exclusive write to a taken name); callers map them to their own error types.
"""

from __future__ import annotations

import contextlib
import os
import secrets

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    exclusive: bool = False,
    dir_fd: int | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically, with exactly ``mode`` (whatever the umask).

    With ``exclusive`` the write fails with :class:`FileExistsError` if ``path`` exists.
    With ``dir_fd`` (an open directory), ``path`` is a bare name inside that directory:
    callers that checked a directory write into the very directory they checked.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if dir_fd is not None:
        _write_in(dir_fd, os.fspath(path), data, mode, exclusive)
        return
    parent, name = os.path.split(os.path.abspath(path))
    directory = os.open(parent, _DIR_FLAGS)
    try:
        _write_in(directory, name, data, mode, exclusive)
    finally:
        os.close(directory)


def _write_in(dir_fd: int, name: str, data: bytes, mode: int, exclusive: bool) -> None:
    if not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a file name")
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temporary, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        else:
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)  # the link made, or the write failed
    os.fsync(dir_fd)  # make the new directory entry durable too
