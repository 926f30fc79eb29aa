#!/usr/bin/env python
"""The original's ``tools/test.py`` command line, run by ddpseg: ``python tools/test.py CONFIG CHECKPOINT --eval mIoU``.

Same as ``ddpseg test``; see ``ddpseg test --help``.
"""

import sys
from pathlib import Path

try:
    import ddpseg  # noqa: F401
except ImportError:  # a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ddpseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
