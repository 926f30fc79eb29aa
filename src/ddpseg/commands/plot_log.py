"""``ddpseg plot-log WORK_DIR``: loss, learning-rate and validation-mIoU curves of a training run, as a PNG.

Reads ``WORK_DIR/metrics.jsonl`` (or a ``.jsonl`` file given directly), the JSON lines the trainer writes, and
draws one panel per quantity with :func:`ddpseg.visualize.plot_training_curves`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "plot-log"
HELP = "draw the loss / lr / mIoU curves of a training run (WORK_DIR/metrics.jsonl) into a PNG"

METRICS_FILE = "metrics.jsonl"
DEFAULT_PNG = "training_curves.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help=f"a training work dir (holding {METRICS_FILE}) or a .jsonl metrics file")
    parser.add_argument("--out", help=f"output PNG (default: {DEFAULT_PNG} beside the metrics file)")


def metrics_file(log: Path) -> Path:
    """The JSON-lines file of ``log``: the file itself, or ``log/metrics.jsonl`` for a work dir."""
    path = log / METRICS_FILE if log.is_dir() else log
    if not path.is_file():
        where = f"{log} holds no {METRICS_FILE}" if log.is_dir() else f"{log} does not exist"
        raise FileNotFoundError(f"{where}; give a training work dir or its {METRICS_FILE}")
    return path


def _plot(args: argparse.Namespace) -> int:
    from ..engine.outputs import check_output_file
    from ..visualize import plot_training_curves

    source = metrics_file(Path(args.log))
    out = check_output_file(Path(args.out) if args.out else source.parent / DEFAULT_PNG, "output PNG")
    print(f"wrote {plot_training_curves(source, out)}")
    return 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg plot-log", _plot, args)
