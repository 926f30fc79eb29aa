"""``ddpseg prepare cityscapes DATA_ROOT``: write the label files the Cityscapes dataset reads."""

from __future__ import annotations

import argparse
import sys

from ddpseg.data.image_io import DataError
from ddpseg.data.prepare import prepare_cityscapes

NAME = "prepare"
HELP = "prepare a dataset: write Cityscapes *_labelTrainIds.png files from the raw gtFine annotations"

_ROUTES = {"auto": None, "polygons": True, "label-ids": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["cityscapes"], help="dataset to prepare")
    parser.add_argument("data_root", metavar="DATA_ROOT", help="folder holding leftImg8bit/ and gtFine/")
    parser.add_argument("--gt-dir", default="gtFine", help="annotation folder under DATA_ROOT (default: gtFine)")
    parser.add_argument("--nproc", type=int, default=None, help="worker processes (default: all CPUs)")
    parser.add_argument(
        "--from",
        dest="route",
        choices=sorted(_ROUTES),
        default="auto",
        help="polygons: draw *_polygons.json with cityscapesscripts; label-ids: map *_labelIds.png; "
        "auto (default): polygons when cityscapesscripts is installed",
    )
    parser.add_argument("--force", action="store_true", help="rewrite label files that already exist")
    parser.add_argument("--no-splits", action="store_true", help="do not write train.txt/val.txt/test.txt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = prepare_cityscapes(
            args.data_root,
            gt_dir=args.gt_dir,
            nproc=args.nproc,
            force=args.force,
            use_cityscapesscripts=_ROUTES[args.route],
            progress=not args.quiet,
            write_splits=not args.no_splits,
        )
    except (DataError, ImportError) as e:
        print(f"ddpseg prepare: error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary.converted} label files ({summary.from_polygons} from polygons), "
        f"{summary.skipped} already there"
    )
    for path in summary.split_files:
        print(f"wrote {path}")
    return 0
