"""``ddpseg test CONFIG CHECKPOINT --eval mIoU``: the original's ``tools/test.py``, same arguments.

Additions: ``--steps N`` (diffusion steps at test time, no retraining), ``--seed`` (base of the per-image
noise, so 1 and N processes agree exactly), ``--device``. Differences: ``--out`` writes the metrics as
JSON (ddpseg never pickles); without ``--out`` and ``--work-dir`` the JSON goes next to the checkpoint;
``--show`` (a window) is not available, use ``--show-dir``; ``--eval cityscapes`` (the official
evaluation script) is not run, use ``--format-only`` and the Cityscapes scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from . import add_tf32_argument

NAME = "test"
HELP = "evaluate a checkpoint on the config's test set (mIoU tables), or write predictions"

DEFAULT_FORMAT_DIR = ".format_cityscapes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import DictAction

    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file (.pth or .safetensors)")
    parser.add_argument("--work-dir", help="write the metrics JSON (eval_*_scale_<time>.json) into this folder")
    parser.add_argument("--aug-test", action="store_true", help="multi-scale (0.5-1.75) + flip test")
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument(
        "--format-only",
        action="store_true",
        help="write the predictions in the test server's format (--eval-options imgfile_prefix=DIR), no metrics",
    )
    parser.add_argument("--eval", type=str, nargs="+", help='metrics: "mIoU", "mDice", "mFscore"')
    parser.add_argument("--show", action="store_true", help="(not available: no window; use --show-dir)")
    parser.add_argument("--show-dir", help="write each prediction over its image into this folder")
    parser.add_argument("--gpu-collect", action="store_true", help="accepted for compatibility; no effect")
    parser.add_argument("--gpu-id", type=int, default=0, help="CUDA device when not distributed (default 0)")
    parser.add_argument("--tmpdir", help="accepted for compatibility; no effect")
    parser.add_argument("--options", nargs="+", action=DictAction, help="deprecated alias of --cfg-options")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value (a.b=1, x=[1,2])"
    )
    parser.add_argument("--eval-options", nargs="+", action=DictAction, help="options of the evaluation/formatting")
    parser.add_argument(
        "--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
        help="job launcher (pytorch: torchrun; its environment is also picked up without this option)",
    )
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the painted segmentation, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the per-image noise (default 0)")
    parser.add_argument("--steps", type=int, help="diffusion steps at test time (default: the config's timesteps)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="run the model under autocast (default: float32)")
    parser.add_argument("--channels-last", action="store_true", help="run the image encoder in NHWC layout (often faster)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder (first image pays the compilation)")
    add_tf32_argument(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:<gpu-id> if available, under "
                        "torchrun cuda:LOCAL_RANK, else cpu)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def _check_arguments(args: argparse.Namespace) -> None:
    from ..evaluation.metrics import ALLOWED_METRICS

    if not (args.out or args.eval or args.format_only or args.show or args.show_dir):
        raise ValueError(
            'specify at least one operation (save/eval/format/show the results) with "--out", "--eval", '
            '"--format-only", "--show" or "--show-dir"'
        )
    if args.eval and args.format_only:
        raise ValueError("--eval and --format-only cannot be both specified")
    if args.options and args.cfg_options:
        raise ValueError("--options and --cfg-options cannot be both specified (--options is deprecated)")
    if args.options:
        warnings.warn("--options is deprecated in favor of --cfg-options", stacklevel=2)
        args.cfg_options = args.options
    if args.out is not None and args.out.endswith((".pkl", ".pickle")):
        raise ValueError(f"--out {args.out}: ddpseg writes the metrics as JSON and never pickles; use a .json name")
    if args.out is not None and not args.eval:
        raise ValueError("--out writes the metrics, so it needs --eval (e.g. --eval mIoU)")
    if args.eval and "cityscapes" in args.eval:
        raise ValueError(
            "--eval cityscapes runs the official Cityscapes script, which ddpseg does not call; use --eval mIoU "
            "(same numbers on train ids) or --format-only --eval-options imgfile_prefix=DIR with cityscapesscripts"
        )
    unknown = [m for m in args.eval or [] if m not in ALLOWED_METRICS]
    if unknown:
        raise ValueError(f"--eval {' '.join(unknown)}: unknown metric; supported: {', '.join(ALLOWED_METRICS)}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.opacity <= 1:
        raise ValueError(f"--opacity must be in (0, 1], got {args.opacity}")
    if args.launcher in ("slurm", "mpi"):
        raise ValueError(f"--launcher {args.launcher} is not supported; use torchrun (tools/dist_test.sh)")
    if args.show:
        warnings.warn("--show opens no window in ddpseg; use --show-dir DIR to save the drawings", stacklevel=2)
    _check_eval_options(args)


def _check_eval_options(args: argparse.Namespace) -> None:
    """mmseg hands ``--eval-options`` to ``dataset.format_results`` (with ``--format-only``) or
    ``dataset.evaluate``; a key neither reads must not be dropped silently."""
    from ..config import check_keys
    from ..engine.evaluate import FORMAT_KEYS, check_format_args

    options = dict(args.eval_options or {})
    options.pop("efficient_test", None)  # mmseg's deprecated flag: accepted, no effect
    if args.format_only:
        check_format_args(options, "--eval-options (with --format-only)")
        return
    formatting = [key for key in options if key in FORMAT_KEYS]
    if formatting:
        raise ValueError(f"--eval-options {', '.join(formatting)}: only used with --format-only (the metrics of "
                         "--eval take no options)")
    check_keys(options, ("efficient_test",), "--eval-options")


def _json_path(args: argparse.Namespace) -> Optional[Path]:
    if not args.eval:
        return None
    if args.out:
        return Path(args.out)
    kind = "multi" if args.aug_test else "single"
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    if args.work_dir:
        return Path(args.work_dir) / f"eval_{kind}_scale_{stamp}.json"
    checkpoint = Path(args.checkpoint)
    return checkpoint.parent / f"{checkpoint.stem}_eval_{kind}_scale_{stamp}.json"


def _under_torchrun() -> bool:
    """Whether torchrun started this process as one of several (its ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _device(args: argparse.Namespace) -> str:
    """``--device``, else CUDA when available (alone ``cuda:<--gpu-id>``; under torchrun ``cuda``, which each
    process resolves to ``cuda:LOCAL_RANK``: a fixed ``cuda:0`` would put every process on GPU 0), else cpu;
    checked to exist here."""
    import torch

    from ..runtime import default_device, parse_device

    if args.device:
        return str(parse_device(args.device))
    if torch.cuda.is_available() and _under_torchrun():
        return "cuda"
    return str(default_device(args.gpu_id))


def _evaluate(args: argparse.Namespace) -> int:
    from ..api import init_model, load_config
    from ..config import ConfigError
    from ..data.build import build_dataset
    from ..engine.distributed import destroy_distributed, get_rank, get_world_size, init_distributed
    from ..engine.evaluate import evaluate_dataset
    from ..engine.outputs import check_output_file
    from ..engine.rng import set_random_seed
    from ..models.build import check_test_cfg
    from ..runtime import apply_tf32, autocast_for, speed_up_encoder, speedup_settings

    _check_arguments(args)
    device = _device(args)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    if "data" not in cfg or "test" not in cfg.data:
        raise ConfigError(f"{args.config} has no data.test section to evaluate on")
    cfg.data.test.test_mode = True
    speedups = speedup_settings(cfg, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                                tf32=args.tf32)
    if args.launcher != "none" or _under_torchrun():  # torchrun's environment is picked up, as `ddpseg train` does
        device = str(init_distributed(device).device)
    apply_tf32(speedups.tf32, device)
    json_path = _json_path(args) if get_rank() == 0 else None
    if json_path is not None:  # fail now, not after the whole test set
        check_output_file(json_path, "metrics file")
    format_args: dict[str, Any] = dict(args.eval_options or {})
    format_args.pop("efficient_test", None)
    if args.format_only:
        format_args.setdefault("imgfile_prefix", DEFAULT_FORMAT_DIR)
    set_random_seed(args.seed)
    try:
        dataset = build_dataset(cfg.data.test)
        model = init_model(cfg, args.checkpoint, device=device)
        speed_up_encoder(model, channels_last=speedups.channels_last, compile=speedups.compile)
        if cfg.get("test_cfg") and "test_cfg" not in cfg.model:  # old configs keep it at the top level
            model.test_cfg = check_test_cfg(cfg.test_cfg, "test_cfg")
        data_cfg = cfg.data
        workers = data_cfg.get("test_dataloader", {}).get("workers_per_gpu", data_cfg.get("workers_per_gpu", 0))
        with autocast_for(device, speedups.amp):
            metrics = evaluate_dataset(
                model,
                dataset,
                steps=args.steps,
                aug_test=args.aug_test,
                seed=args.seed,
                metrics=args.eval,
                show_dir=args.show_dir,
                opacity=args.opacity,
                format_only=args.format_only,
                format_args=format_args if args.format_only else None,
                workers=int(workers),
            )
        if json_path is not None:
            record = dict(
                config=args.config,
                checkpoint=args.checkpoint,
                metric={k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
                steps=args.steps or model.timesteps,
                aug_test=args.aug_test,
                amp=speedups.amp,
                channels_last=speedups.channels_last,
                compile=speedups.compile,
                tf32=speedups.tf32,
                test_mode=model.test_cfg.get("mode", "whole"),
                seed=args.seed,
                world_size=get_world_size(),
            )
            json_path.write_text(json.dumps(record, indent=4, allow_nan=False) + "\n")  # NaN (absent class) -> null
            print(f"metrics written to {json_path}")
        if args.format_only and get_rank() == 0:
            print(f"predictions written to {format_args['imgfile_prefix']}")
    finally:
        destroy_distributed()
    return 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg test", _evaluate, args)
