"""``ddpseg demo IMAGE|FOLDER CONFIG CHECKPOINT [OUT]``: segment pictures, write overlays and label maps.

For each image it writes ``OUT`` (the colour overlay), ``<OUT stem>_labels.png`` (the class indices as a
palette PNG: pixel value = class, viewers show the colours) and, with ``--uncertainty``,
``<OUT stem>_entropy.png`` and ``<OUT stem>_disagreement.png`` (heatmaps with a colour bar). With a
folder, OUT is a folder and every image below IMAGE gets its files there under the same relative path,
as ``<name>.png``; images whose files would share a name (``a.png`` and ``a.jpg``) keep their extension
instead (``a.png.png``, ``a.jpg.png``, ``a.jpg_labels.png`` ...), so no file is written twice.
Before loading the model the demo checks that OUT has an extension OpenCV can write and that no output
would replace an input image. The arguments of the original's ``image_demo.py`` work unchanged
(``--out-file``, ``--device``, ``--palette``, ``--opacity``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from . import add_tf32_argument

NAME = "demo"
HELP = "segment an image or a folder of images: colour overlay, label PNG and optional uncertainty heatmaps"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("img", help="image file, or a folder searched recursively for images")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (.pth or .safetensors)")
    parser.add_argument(
        "out",
        nargs="?",
        help="output image file for one image (.png .jpg .bmp .tif .webp ...; default IMG_STEM_pred.png), or "
        "output folder for a folder of images (default demo_out): each image gets <relative path>.png there, "
        "or <relative path with its extension>.png (a.jpg.png) where two images share a name. "
        "Outputs never replace an input image",
    )
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
    add_tf32_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--uncertainty", action="store_true", help="also write entropy and step-disagreement heatmaps")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _output_files(overlay: Path, uncertainty: bool) -> list[Path]:
    """Every file one image's run writes: the overlay, the label PNG and, with --uncertainty, the heatmaps."""
    stem = overlay.with_suffix("")
    extras = ["labels"] + (["entropy", "disagreement"] if uncertainty else [])
    return [overlay] + [Path(f"{stem}_{extra}.png") for extra in extras]


def _folder_overlays(source: Path, images: list[Path], out_dir: Path, uncertainty: bool) -> list[Path]:
    """The overlay path of each image: ``OUT/<relative path>.png``, or ``OUT/<relative path with its
    extension>.png`` for the images whose files would otherwise share a name with another image's."""
    overlays = {image: out_dir / image.relative_to(source).with_suffix(".png") for image in images}
    renamed: set[Path] = set()
    while True:
        owners: dict[str, tuple[Path, set[Path]]] = {}
        for image, overlay in overlays.items():
            for path in _output_files(overlay, uncertainty):
                owners.setdefault(os.path.normcase(str(path)), (path, set()))[1].add(image)
        clashes = [(path, sorted(users)) for path, users in owners.values() if len(users) > 1]
        if not clashes:
            return [overlays[image] for image in images]
        to_rename = {image for _, users in clashes for image in users} - renamed
        if not to_rename:  # distinct names never get here, except where the file system ignores case
            path, users = clashes[0]
            raise ValueError(f"{users[0]} and {users[1]} would both write {path}; rename one of them")
        for image in to_rename:
            overlays[image] = out_dir / f"{image.relative_to(source)}.png"
        renamed |= to_rename


def _resolved(path: Path) -> str:
    try:
        return os.path.normcase(str(path.resolve()))
    except (OSError, RuntimeError):  # a symlink loop
        return os.path.normcase(str(path.absolute()))


def _refuse_to_overwrite_inputs(images: list[Path], outputs: list[Path], what: str) -> None:
    """Raise :class:`OutputError` if an output path is (resolves to, or is the same file as) an input image."""
    from ..engine.outputs import OutputError

    by_path = {_resolved(image): image for image in images}
    by_file = {}
    for image in images:
        try:
            info = image.stat()
        except OSError:
            continue
        by_file[(info.st_dev, info.st_ino)] = image
    for output in outputs:
        image = by_path.get(_resolved(output))
        if image is None:
            try:
                info = output.stat()
            except OSError:  # not there yet
                continue
            image = by_file.get((info.st_dev, info.st_ino))
        if image is not None:
            raise OutputError(
                f"output {output} would overwrite the input image {image}; give another {what}"
            )


def _jobs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(input image, output overlay path) pairs. Checked before any work: the outputs are writable, have an
    image extension OpenCV can write, are all distinct and none replaces an input image."""
    from ..data.image_io import DataError
    from ..engine.outputs import check_output_dir, check_output_file
    from ..visualize import check_image_extension

    source = Path(args.img)
    out: Optional[str] = args.out or args.out_file
    if args.out and args.out_file and args.out != args.out_file:
        raise ValueError(f"two outputs given: {args.out} and --out-file {args.out_file}")
    if source.is_dir():
        images = _images_in(source)
        if not images:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        out_dir = Path(out or "demo_out")
        overlays = _folder_overlays(source, images, out_dir, args.uncertainty)
        outputs = [path for overlay in overlays for path in _output_files(overlay, args.uncertainty)]
        _refuse_to_overwrite_inputs(images, outputs, "output folder")
        check_output_dir(out_dir, "output folder")
        return list(zip(images, overlays))
    if not source.exists():
        raise DataError(f"{source}: file not found")
    out_file = Path(out) if out else Path(f"{source.stem}_pred.png")
    if not out_file.is_dir():  # a folder is check_output_file's to report
        check_image_extension(out_file, "output file")
    _refuse_to_overwrite_inputs([source], _output_files(out_file, args.uncertainty), "output file")
    check_output_file(out_file, "output file")
    return [(source, out_file)]


def _write(result, out_file: Path, palette, opacity: float, uncertainty: bool) -> list[Path]:
    from ..inference import show_result
    from ..visualize import save_image, save_label_png, uncertainty_heatmap

    written = _output_files(out_file, uncertainty)
    show_result(result, palette=palette, opacity=opacity, out_file=out_file)
    save_label_png(written[1], result.labels, result.palette if palette is None else palette)  # as the overlay
    if uncertainty:
        save_image(written[2], uncertainty_heatmap(result.entropy, vmin=0.0))
        save_image(written[3], uncertainty_heatmap(result.step_disagreement, vmin=0.0, vmax=1.0))
    return written


def _demo(args: argparse.Namespace) -> int:
    import torch

    from ..api import init_model
    from ..data.image_io import DataError
    from ..inference import inference
    from ..runtime import apply_tf32, autocast_for, default_device, parse_device, speed_up_encoder, speedup_settings
    from ..visualize import get_palette

    if not 0 < args.opacity <= 1:
        raise ValueError(f"--opacity must be in (0, 1], got {args.opacity}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    device = str(parse_device(args.device) if args.device else default_device())
    jobs = _jobs(args)
    if args.palette is not None and args.palette.lower() != "random":
        get_palette(args.palette)  # a missing or malformed palette is reported before loading the model
    model = init_model(args.config, args.checkpoint, device=device)
    speedups = speedup_settings(model.cfg, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                                tf32=args.tf32)
    apply_tf32(speedups.tf32, device)
    speed_up_encoder(model, channels_last=speedups.channels_last, compile=speedups.compile)
    palette = None if args.palette is None else get_palette(args.palette, model.num_classes)
    failed = done = 0
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
            done += 1
            if progress is None:
                print("wrote " + ", ".join(str(p) for p in written))
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
        print(f"wrote {done} of {len(jobs)} overlays under {args.out or args.out_file or 'demo_out'}")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg demo", _demo, args)
