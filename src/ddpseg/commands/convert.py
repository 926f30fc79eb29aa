"""``ddpseg convert``: an official DDP checkpoint (.pth) → ddpseg format (safetensors + readable config)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

NAME = "convert"
HELP = "convert an official DDP checkpoint (.pth, mmseg key names) to ddpseg's safetensors + config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official checkpoint, e.g. ddp_convnext_t_4x4_512x1024_160k_cityscapes.pth")
    parser.add_argument("out", help="output path without suffix (writes OUT.safetensors and OUT.py)")
    parser.add_argument("--config", help="config of the checkpoint (default: configs/**/<checkpoint name>.py)")


def find_config_for(checkpoint: str) -> Optional[Path]:
    """The bundled config named like the checkpoint file (``ddp_..._cityscapes.pth`` → ``configs/**/ddp_..._cityscapes.py``)."""
    from ..paths import configs_dir

    root = configs_dir()
    if root is None:
        return None
    matches = sorted(root.rglob(f"{Path(checkpoint).stem}.py"))
    return matches[0] if len(matches) == 1 else None


def _convert(args: argparse.Namespace) -> int:
    from ..api import init_model
    from ..config import ConfigError
    from ..convert import CheckpointError, read_checkpoint, save_ddpseg_checkpoint
    from ..engine.outputs import check_output_file

    checkpoint = Path(args.checkpoint)
    if not str(args.checkpoint).startswith(("http://", "https://")) and not checkpoint.exists():
        raise CheckpointError(f"checkpoint {args.checkpoint} not found")
    config = args.config or find_config_for(args.checkpoint)
    if config is None:
        raise ConfigError(f"no config named like {checkpoint.name} under configs/; pass --config CONFIG")
    out = Path(args.out)
    if out.suffix == ".safetensors":
        out = out.with_suffix("")
    for suffix in (".safetensors", ".py"):  # fail now, before loading the model
        check_output_file(out.parent / (out.name + suffix), "output file")
    model = init_model(config, args.checkpoint)
    _, meta = read_checkpoint(args.checkpoint)
    keep = {k: meta[k] for k in ("CLASSES", "PALETTE", "mmseg_version") if k in meta}
    keep["converted_from"] = checkpoint.name
    written = save_ddpseg_checkpoint(model, out, model.cfg, keep)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {written} and {written.with_suffix('.py')} ({parameters:,} parameters)")
    return 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg convert", _convert, args)
