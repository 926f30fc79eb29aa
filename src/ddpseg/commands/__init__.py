"""The command-line commands (one module each); shared argument helpers here, free of heavy imports."""

from __future__ import annotations

import argparse


def add_tf32_argument(parser: argparse.ArgumentParser) -> None:
    """``--tf32`` / ``--no-tf32`` (default: the config's ``speedups.tf32``, else PyTorch's defaults)."""
    parser.add_argument(
        "--tf32", action=argparse.BooleanOptionalAction, default=None,
        help="CUDA only: --tf32 lets float32 matrix products and convolutions use TF32 tensor cores (faster, "
             "10-bit mantissa inputs); --no-tf32 keeps both in full float32 (default: the config's speedups.tf32, "
             "else PyTorch's defaults: TF32 convolutions, float32 matrix products, as the original ran)",
    )
