#!/usr/bin/env python
"""The original's image demo, run by ddpseg:

    python image_demo.py IMAGE CONFIG CHECKPOINT [OUT_FILE] --device cpu --palette cityscapes [--opacity 0.5]

Same as ``ddpseg demo`` (which also takes a folder of images and ``--uncertainty``); see ``ddpseg demo --help``.
"""

import sys
from pathlib import Path

try:
    import ddpseg  # noqa: F401
except ImportError:  # a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from ddpseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
