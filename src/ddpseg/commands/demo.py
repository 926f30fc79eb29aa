"""``ddpseg demo IMAGE|FOLDER CONFIG CHECKPOINT [OUT]``: segment pictures, write overlays and label maps.

For each image it writes ``OUT`` (the colour overlay), ``<OUT stem>_labels.png`` (the class indices as a
palette PNG: pixel value = class, viewers show the colours) and, with ``--uncertainty``,
``<OUT stem>_entropy.png`` and ``<OUT stem>_disagreement.png`` (heatmaps with a colour bar). With a
folder, OUT is a folder and every image below IMAGE gets its files there under the same relative path.
The arguments of the original's ``image_demo.py`` work unchanged (``--out-file``, ``--device``,
``--palette``, ``--opacity``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

NAME = "demo"
HELP = "segment an image or a folder of images: colour overlay, label PNG and optional uncertainty heatmaps"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("img", help="image file, or a folder searched recursively for images")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (.pth or .safetensors)")
    parser.add_argument("out", nargs="?", help="output file (one image) or folder (a folder of images)")
    parser.add_argument("--out-file", help="same as OUT (the original's option)")
    parser.add_argument("--device", help="cpu, cuda, cuda:0 ... (default: cuda:0 if available, else cpu)")
    parser.add_argument(
        "--palette",
        help="cityscapes, ade, random, or a .json/.txt file of RGB triples (default: the checkpoint's/dataset's)",
    )
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the painted segmentation, in (0, 1]")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: the config's timesteps)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="run the model under autocast (default: float32)")
    parser.add_argument("--channels-last", action="store_true", help="run the image encoder in NHWC layout (often faster)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder (first image pays the compilation)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--uncertainty", action="store_true", help="also write entropy and step-disagreement heatmaps")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _jobs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(input image, output overlay path) pairs; the output folder is checked writable first."""
    from ..data.image_io import DataError
    from ..engine.outputs import check_output_dir, check_output_file

    source = Path(args.img)
    out: Optional[str] = args.out or args.out_file
    if args.out and args.out_file and args.out != args.out_file:
        raise ValueError(f"two outputs given: {args.out} and --out-file {args.out_file}")
    if source.is_dir():
        images = _images_in(source)
        if not images:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        out_dir = check_output_dir(out or "demo_out", "output folder")
        return [(img, out_dir / img.relative_to(source).with_suffix(".png")) for img in images]
    if not source.exists():
        raise DataError(f"{source}: file not found")
    out_file = Path(out) if out else Path(f"{source.stem}_pred.png")
    check_output_file(out_file, "output file")
    return [(source, out_file)]


def _write(result, out_file: Path, palette, opacity: float, uncertainty: bool) -> list[Path]:
    from ..inference import show_result
    from ..visualize import save_image, save_label_png, uncertainty_heatmap

    show_result(result, palette=palette, opacity=opacity, out_file=out_file)
    stem = out_file.with_suffix("")
    written = [out_file, save_label_png(f"{stem}_labels.png", result.labels, palette)]
    if uncertainty:
        written.append(save_image(f"{stem}_entropy.png", uncertainty_heatmap(result.entropy, vmin=0.0)))
        disagreement = uncertainty_heatmap(result.step_disagreement, vmin=0.0, vmax=1.0)
        written.append(save_image(f"{stem}_disagreement.png", disagreement))
    return written


def _demo(args: argparse.Namespace) -> int:
    import torch

    from ..api import init_model
    from ..data.image_io import DataError
    from ..inference import inference
    from ..runtime import autocast_for, default_device, parse_device, speed_up_encoder, speedup_settings
    from ..visualize import get_palette

    if not 0 < args.opacity <= 1:
        raise ValueError(f"--opacity must be in (0, 1], got {args.opacity}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    device = str(parse_device(args.device) if args.device else default_device())
    jobs = _jobs(args)
    model = init_model(args.config, args.checkpoint, device=device)
    speedups = speedup_settings(model.cfg, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    speed_up_encoder(model, channels_last=speedups.channels_last, compile=speedups.compile)
    palette = None if args.palette is None else get_palette(args.palette, model.num_classes)
    failed = 0
    progress = None
    if len(jobs) > 1:
        from tqdm import tqdm

        progress = tqdm(total=len(jobs), unit="img", file=sys.stderr)
    for image, out_file in jobs:
        generator = torch.Generator(device=torch.device(device)).manual_seed(args.seed)
        try:
            with autocast_for(device, speedups.amp):
                result = inference(model, str(image), steps=args.steps, generator=generator)
        except DataError as err:
            if len(jobs) == 1:
                raise
            failed += 1
            print(f"ddpseg demo: skipped: {err}", file=sys.stderr)
        else:
            written = _write(result, out_file, palette, args.opacity, args.uncertainty)
            if progress is None:
                print("wrote " + ", ".join(str(p) for p in written))
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
        print(f"wrote {len(jobs) - failed} of {len(jobs)} overlays under {args.out or args.out_file or 'demo_out'}")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg demo", _demo, args)
