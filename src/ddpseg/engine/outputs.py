"""Checking output locations before any work is done, so a long run never fails at its first write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["OutputError", "check_output_dir", "check_output_file"]


class OutputError(OSError):
    """An output folder or file cannot be created or written; the message names it."""


def _file_in_the_way(path: Path) -> Optional[Path]:
    """The nearest existing one of ``path`` and its parents when that is not a folder (nothing can be made below it)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def check_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it writable by writing (and removing) a probe file."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker == path:
        raise OutputError(f"{what} {path} exists and is not a folder")
    if blocker is not None:
        raise OutputError(f"{what} {path} cannot be created: {blocker} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".ddpseg-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {path} cannot be written: {err.strerror or err}") from None
    return path


def check_output_file(path: PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written: its folder is writable and it is not a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise OutputError(f"{what} {path} cannot be written: {blocker} is a file, not a folder")
    check_output_dir(folder, f"the folder of {what} {path}")
    return path
