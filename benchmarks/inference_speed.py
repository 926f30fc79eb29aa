"""Inference (and optionally training-step) speed of a config: a thin wrapper over ``ddpseg benchmark``.

    python benchmarks/inference_speed.py                       # ddp_convnext_t Cityscapes, 1×3×512×1024, steps 1 3 10
    python benchmarks/inference_speed.py --train --threads 2   # plus one training step, in a fresh process
    python benchmarks/inference_speed.py --module-decoder      # the module-by-module decoder, for comparison
"""

from __future__ import annotations

import sys
from pathlib import Path

from ddpseg.cli import main

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py"
REFERENCE = Path(__file__).resolve().parents[2] / "shared/parity/reference_timing.json"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        args = [str(DEFAULT_CONFIG)] + args
    if REFERENCE.is_file() and "--reference" not in args:
        args += ["--reference", str(REFERENCE)]
    print("command: python benchmarks/inference_speed.py " + " ".join(sys.argv[1:]))
    sys.exit(main(["benchmark"] + args))
