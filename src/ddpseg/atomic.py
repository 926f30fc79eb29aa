"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "AtomicWriteError"]


class AtomicWriteError(OSError):
    """Writing a file failed (full disk, no permission, missing folder); the message names the file."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None], keep_suffix: bool = False) -> Path:
    """``write(temp)`` on a temporary file ``.NAME.PID.tmp`` in ``path``'s folder (created if missing), fsync, rename over ``path``, fsync the folder. On failure the temporary file is removed,
    ``path`` is untouched and :class:`AtomicWriteError` names it. New files get the usual umask mode.
    ``keep_suffix`` names the temporary file ``.STEM.PID.tmp.SUFFIX`` for writers that pick the format
    from the extension (OpenCV, Pillow).
    """
    path = Path(path)
    name = f".{path.stem}.{os.getpid()}.tmp{path.suffix}" if keep_suffix else f".{path.name}.{os.getpid()}.tmp"
    tmp = path.parent / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        if os.name == "posix":  # folders cannot be opened for fsync on Windows
            _fsync(path.parent)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, Exception) and not isinstance(err, AtomicWriteError):
            reason = err.strerror if isinstance(err, OSError) and err.strerror else err
            blocker = next((p for p in path.parents if p.exists()), None)
            if isinstance(err, (FileExistsError, NotADirectoryError)) and blocker and not blocker.is_dir():
                reason = f"{blocker} is a file, not a folder"
            raise AtomicWriteError(f"could not write {path}: {reason}") from err
        raise
    return path
