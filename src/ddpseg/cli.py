"""The ``ddpseg`` command line: one sub-command per module in :mod:`ddpseg.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# One explicit list; the module for each name lives in ddpseg/commands/<module>.py.
COMMANDS: tuple[str, ...] = (
    "prepare", "browse_dataset",
    "train", "quickstart", "plot_log",
    "convert",
    "benchmark",
    "test",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpseg", description="DDP diffusion semantic segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMANDS:
        module = importlib.import_module(f"ddpseg.commands.{module_name}")
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .runtime import tune_cpu_allocator

    tune_cpu_allocator()
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
