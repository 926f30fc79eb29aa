"""Where the bundled configs live (the repository's ``configs/``, or beside the installed package)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["configs_dir"]


def configs_dir() -> Optional[Path]:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    return None
