"""``ddpseg train CONFIG``: the original's ``tools/train.py``, same arguments, plus a few of its own.

One process: ``ddpseg train CONFIG``. Several GPUs or machines: ``bash tools/dist_train.sh CONFIG GPUS`` (torchrun;
``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``PORT`` for several machines). Without GPUs the processes train on
the CPU over gloo.

Additions: ``--resume [CKPT]`` (no value: the work dir's latest checkpoint), ``--amp {bf16,fp16}``, ``--device``.
Differences: ``--launcher slurm/mpi`` are not supported (use torchrun); the original's ``--gpus``/``--gpu-ids``
are deprecated there too and choose one GPU here as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import add_tf32_argument

NAME = "train"
HELP = "train a segmentor from a config (one process, or several under torchrun / tools/dist_train.sh)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import DictAction

    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models (default: ./work_dirs/<config name>)")
    parser.add_argument("--load-from", help="the checkpoint file to load weights from (official .pth or ddpseg)")
    parser.add_argument(
        "--resume", nargs="?", const="auto", metavar="CKPT",
        help="continue a run exactly from CKPT, or without a value from the work dir's latest checkpoint",
    )
    parser.add_argument("--resume-from", help="the checkpoint file to resume from (same as --resume CKPT)")
    parser.add_argument("--auto-resume", action="store_true", help="resume from the latest checkpoint automatically")
    parser.add_argument("--no-validate", action="store_true", help="do not evaluate the checkpoint during training")
    gpus = parser.add_mutually_exclusive_group()
    gpus.add_argument("--gpus", type=int, help="(deprecated, use --gpu-id) number of GPUs; only 1 is used")
    gpus.add_argument("--gpu-ids", type=int, nargs="+", help="(deprecated, use --gpu-id) the first one is used")
    gpus.add_argument("--gpu-id", type=int, default=0, help="CUDA device when not distributed (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: resumed run's, else random)")
    parser.add_argument("--diff_seed", "--diff-seed", action="store_true",
                        help="seed each process with seed + rank")
    parser.add_argument("--deterministic", action="store_true", help="deterministic cuDNN and PyTorch algorithms")
    parser.add_argument("--options", nargs="+", action=DictAction, help="deprecated alias of --cfg-options")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value (a.b=1, x=[1,2])"
    )
    parser.add_argument(
        "--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
        help="job launcher (pytorch: torchrun; its environment is also picked up without this option)",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (autocast; fp16 adds loss scaling)")
    parser.add_argument("--channels-last", action="store_true", help="image encoder in NHWC layout (config: speedups)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder (config: speedups)")
    add_tf32_argument(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: on a terminal)")


def _check_arguments(args: argparse.Namespace) -> None:
    if args.options and args.cfg_options:
        raise ValueError("--options and --cfg-options cannot be both specified (--options is deprecated)")
    if args.options:
        warnings.warn("--options is deprecated in favor of --cfg-options", stacklevel=2)
        args.cfg_options = args.options
    given = [name for name, value in (("--resume", args.resume), ("--resume-from", args.resume_from)) if value]
    if len(given) > 1:
        raise ValueError("--resume and --resume-from cannot be both specified")
    if args.launcher in ("slurm", "mpi"):
        raise ValueError(f"--launcher {args.launcher} is not supported; launch with torchrun (tools/dist_train.sh)")
    if args.launcher == "pytorch" and "RANK" not in os.environ:
        raise ValueError("--launcher pytorch needs torchrun's environment (RANK, WORLD_SIZE, ...); start it with "
                         "torchrun or tools/dist_train.sh")
    if args.gpus is not None:
        warnings.warn("--gpus is deprecated: one process trains on one GPU; use tools/dist_train.sh for more",
                      stacklevel=2)
    if args.gpu_ids is not None:
        warnings.warn("--gpu-ids is deprecated, use --gpu-id; the first id is used", stacklevel=2)
        args.gpu_id = args.gpu_ids[0]


def _device(args: argparse.Namespace) -> str:
    """``--device`` (checked to exist here), else CUDA when available, else cpu."""
    import torch

    from ..runtime import default_device, parse_device

    if args.device:
        return str(parse_device(args.device))
    if not torch.cuda.is_available():
        return "cpu"
    # Under torchrun every process takes cuda:LOCAL_RANK; alone it takes --gpu-id.
    return "cuda" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else str(default_device(args.gpu_id))


def _train(args: argparse.Namespace) -> int:
    from ..api import load_config
    from ..engine.distributed import destroy_distributed, exit_worker, get_rank, get_world_size
    from ..engine.runner import default_work_dir, run_training
    from ..engine.trainer import NonFiniteLossError

    _check_arguments(args)
    device = _device(args)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    work_dir = args.work_dir or default_work_dir(cfg)
    resume = args.resume or args.resume_from or ("auto" if args.auto_resume else None)
    try:
        run_training(
            cfg, work_dir=work_dir, resume=resume, load_from=args.load_from, seed=args.seed,
            diff_seed=args.diff_seed, deterministic=args.deterministic, amp=args.amp, device=device,
            channels_last=args.channels_last, compile=args.compile, tf32=args.tf32,
            validate=not args.no_validate, progress=False if args.no_progress else None, print_eval_tables=True,
        )
        main = get_rank() == 0
        distributed = get_world_size() > 1
    except NonFiniteLossError as err:
        print(f"ddpseg train: error: {err}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    if main:
        print(f"training finished; checkpoints, logs and metrics are in {work_dir} "
              f"(plot them with: ddpseg plot-log {work_dir})")
    if distributed:
        exit_worker(0)
    return 0


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg train", _train, args)
