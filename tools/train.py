#!/usr/bin/env python
"""The original's ``tools/train.py`` command line, run by ddpseg: ``python tools/train.py CONFIG [options]``.

Same as ``ddpseg train``; see ``ddpseg train --help``. Several processes: ``bash tools/dist_train.sh CONFIG GPUS``.
"""

import sys
from pathlib import Path

try:
    import ddpseg  # noqa: F401
except ImportError:  # a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ddpseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
