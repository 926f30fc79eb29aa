"""``ddpseg quickstart``: the whole pipeline in a few minutes on a CPU, into one folder.

1. writes a small synthetic dataset in the Cityscapes layout (class-coloured shapes) under ``OUT/data``;
2. trains the mini DDP of ``configs/quickstart/ddp_convnext_mini_synthetic.py`` on it with a progress bar
   (checkpoints, text log, ``metrics.jsonl`` and TensorBoard scalars in ``OUT/work_dir``; run it again to
   continue an interrupted run, delete ``OUT`` to start over);
3. evaluates it on the validation images (mIoU table);
4. segments a validation image: ``OUT/demo_overlay.png``, ``OUT/demo_uncertainty.png`` (entropy) and
   ``OUT/demo_comparison.png`` (image | prediction | ground truth);
5. draws the training curves, ``OUT/training_curves.png``, and writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME = "quickstart"
HELP = "train a small DDP on a synthetic dataset on the CPU in minutes, evaluate it and draw its predictions"

CONFIG = "quickstart/ddp_convnext_mini_synthetic.py"
DEFAULT_OUT = "ddpseg_quickstart"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    parser.add_argument("--config", help=f"training config (default configs/{CONFIG})")
    parser.add_argument("--iters", type=int, help="training iterations (default: the config's runner.max_iters)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and noise (default 0)")
    parser.add_argument("--num-train", type=int, default=16, help="synthetic training images (default 16)")
    parser.add_argument("--num-val", type=int, default=8, help="synthetic validation images (default 8)")


def _config_path(args: argparse.Namespace) -> Path:
    from ..config import ConfigError
    from ..paths import configs_dir

    if args.config:
        return Path(args.config)
    root = configs_dir()
    if root is None or not (root / CONFIG).is_file():
        raise ConfigError(f"the bundled configs/{CONFIG} was not found; pass --config PATH")
    return root / CONFIG


def _quickstart(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..api import load_config
    from ..data.build import build_dataset
    from ..data.synthetic import make_synthetic_cityscapes
    from ..engine.checkpoint import find_latest
    from ..engine.evaluate import evaluate_dataset
    from ..engine.outputs import check_output_dir
    from ..engine.runner import run_training
    from ..inference import inference, show_result
    from ..runtime import parse_device
    from ..visualize import colorize, plot_training_curves, save_image, uncertainty_heatmap

    if args.iters is not None and args.iters < 1:
        raise ValueError(f"--iters must be >= 1, got {args.iters}")
    parse_device(args.device)  # a clear error before any work
    start = time.perf_counter()
    out = check_output_dir(args.out, "quickstart output folder")
    data_root = out / "data" / "synthetic_cityscapes"
    if not (data_root / "leftImg8bit").is_dir():
        print(f"[1/5] writing a synthetic Cityscapes-layout dataset to {data_root}", flush=True)
        make_synthetic_cityscapes(data_root, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    else:
        print(f"[1/5] reusing the synthetic dataset of an earlier run in {data_root} (--num-train/--num-val/--seed "
              f"apply to a new --out folder)", flush=True)
    options = {f"data.{split}.data_root": str(data_root) for split in ("train", "val", "test")}
    cfg = load_config(_config_path(args), options)
    if args.iters is not None:
        # A short run still logs often enough to draw curves.
        interval = min(int((cfg.get("log_config") or {}).get("interval", 50)), max(1, args.iters // 10))
        cfg.merge_from_dict({"runner.max_iters": args.iters, "log_config.interval": interval})
    work_dir = out / "work_dir"

    latest = find_latest(work_dir) if work_dir.is_dir() else None
    done = f"; continuing the earlier run from {latest.name}" if latest is not None else ""
    print(f"[2/5] training ({cfg.runner.max_iters} iterations on {args.device}{done}); checkpoints and logs in "
          f"{work_dir}", flush=True)
    model = run_training(cfg, work_dir=work_dir, resume="auto", seed=args.seed, device=args.device, progress=True)
    train_s = time.perf_counter() - start

    print("[3/5] evaluating on the validation images", flush=True)
    val_set = build_dataset(cfg.data.test, dict(test_mode=True))
    metrics = evaluate_dataset(model, val_set, seed=args.seed, progress=False)

    print("[4/5] segmenting a validation image", flush=True)
    model.cfg = cfg
    model.eval()
    image = val_set.image_path(0)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    result = inference(model, image, generator=generator)
    overlay_png = out / "demo_overlay.png"
    show_result(result, out_file=overlay_png)
    uncertainty_png = save_image(out / "demo_uncertainty.png", uncertainty_heatmap(result.entropy, vmin=0.0))
    # The synthetic images are drawn in the palette's colours, so an overlay hides mistakes: compare side by side.
    panels = [result.image, colorize(result.labels, val_set.PALETTE), colorize(val_set.get_gt_seg_map(0), val_set.PALETTE)]
    comparison_png = save_image(out / "demo_comparison.png", np.concatenate(panels, axis=1))

    print("[5/5] drawing the training curves", flush=True)
    curves_png = plot_training_curves(work_dir / "metrics.jsonl", out / "training_curves.png")
    latest = find_latest(work_dir)
    weights = latest.with_name(latest.name[: -len(".json")] + ".safetensors") if latest else work_dir
    wall_s = time.perf_counter() - start
    results = {"mIoU": metrics["mIoU"], "aAcc": metrics["aAcc"], "mAcc": metrics["mAcc"],
               "iters": cfg.runner.max_iters, "train_s": round(train_s, 1), "wall_s": round(wall_s, 1),
               "device": args.device, "threads": torch.get_num_threads()}
    results_json = out / "results.json"
    results_json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nddpseg quickstart: done in {wall_s / 60:.1f} min; mIoU {100 * metrics['mIoU']:.2f} on "
        f"{len(val_set)} validation images\n"
        f"  dataset          {data_root}\n"
        f"  checkpoints+logs {work_dir}  (latest: {work_dir / 'latest.json'})\n"
        f"  overlay          {overlay_png}  (input: {image})\n"
        f"  uncertainty      {uncertainty_png}\n"
        f"  comparison       {comparison_png}  (image | prediction | ground truth)\n"
        f"  training curves  {curves_png}\n"
        f"  numbers          {results_json}\n"
        f"next: ddpseg demo IMAGE {work_dir / Path(cfg.filename).name} {weights} OUT.png --uncertainty",
        flush=True,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg quickstart", _quickstart, args)
