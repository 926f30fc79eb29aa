"""``ddpseg browse-dataset CONFIG --out DIR``: see what the model is fed during training."""

from __future__ import annotations

import argparse
import sys

from ddpseg.config import Config, ConfigError, DictAction
from ddpseg.data.browse import DEFAULT_SKIP_TYPES, browse_dataset
from ddpseg.data.image_io import DataError

NAME = "browse-dataset"
HELP = "write training samples (after the training pipeline) with their labels drawn over them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="config file")
    parser.add_argument("--out", default="browse_dataset", metavar="DIR", help="output folder (default: browse_dataset)")
    parser.add_argument("--num", type=int, default=20, help="number of samples to write (default: 20; 0: all)")
    parser.add_argument(
        "--skip-type",
        nargs="+",
        default=list(DEFAULT_SKIP_TYPES),
        help=f"pipeline steps to leave out (default: {' '.join(DEFAULT_SKIP_TYPES)})",
    )
    parser.add_argument("--show-origin", action="store_true", help="only load: no augmentation")
    parser.add_argument("--opacity", type=float, default=0.5, help="label opacity in (0, 1] (default: 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random augmentation (default: 0)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE", help="override config keys")


def run(args: argparse.Namespace) -> int:
    try:
        if args.num < 0:
            raise ValueError(f"--num must be >= 0 (0: all samples), got {args.num}")
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        written = browse_dataset(
            cfg.data.train,
            args.out,
            num_samples=args.num or None,
            skip_types=args.skip_type,
            show_origin=args.show_origin,
            opacity=args.opacity,
            seed=args.seed,
        )
    except (AttributeError, ConfigError, DataError, ValueError, OSError) as e:
        print(f"ddpseg browse-dataset: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} images to {args.out}")
    return 0
