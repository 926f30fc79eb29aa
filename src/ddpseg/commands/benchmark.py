"""``ddpseg benchmark``: latency per step count, FLOPs against this machine's matmul ceiling, training step."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from pathlib import Path

from . import add_tf32_argument

NAME = "benchmark"
HELP = "measure inference latency per diffusion step count (and a training step) of a config's model"

_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config")
    parser.add_argument("--shape", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=sorted(_DTYPES), help="autocast dtype for the model (default: the config's "
                        "speedups.amp, else fp32)")
    parser.add_argument("--channels-last", action="store_true", help="image encoder in NHWC layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    add_tf32_argument(parser)
    parser.add_argument("--module-decoder", action="store_true", help="use the module-by-module decoder, not the chunked one")
    parser.add_argument("--train", action="store_true", help="also time one training step (in a fresh process)")
    parser.add_argument("--reference", type=Path, help="JSON of the original's timings to print beside ours")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")


def _setup(args):
    import torch

    from ..runtime import apply_tf32, parse_device, speed_up_encoder, speedup_settings, tune_cpu_allocator

    tune_cpu_allocator()  # also in the spawned training worker

    from ..api import load_config
    from ..models.build import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    speedups = speedup_settings(cfg, amp=None if args.amp in (None, "fp32") else args.amp,
                                channels_last=args.channels_last, compile=args.compile, tf32=args.tf32)
    apply_tf32(speedups.tf32, device)  # before the matmul ceiling too: it measures what the model gets
    if args.amp is None:
        args.amp = speedups.amp or "fp32"
    args.channels_last, args.compile = speedups.channels_last, speedups.compile
    model = build_model(cfg.model).to(device)
    model.chunked_decoder = not args.module_decoder
    speed_up_encoder(model, channels_last=speedups.channels_last, compile=speedups.compile)
    dtype = getattr(torch, _DTYPES[args.amp]) if _DTYPES[args.amp] else None
    return torch, device, model, dtype


def _train_worker(args, queue) -> None:
    from ..benchmark import measure_train_step

    torch, device, model, dtype = _setup(args)
    queue.put(measure_train_step(model, args.shape, batch=args.batch, device=device, repeats=max(2, args.repeats // 2),
                                 warmup=args.warmup, amp_dtype=dtype))


def run(args: argparse.Namespace) -> int:
    from .errors import report_user_errors

    return report_user_errors("ddpseg benchmark", _benchmark, args)


def _check_arguments(args: argparse.Namespace) -> None:
    """Numbers the measurement cannot run with, named before the model is built."""
    if min(args.shape) < 32:
        raise ValueError(f"--shape must be two sizes >= 32 (H W; the backbones' coarsest stride), got "
                         f"{' '.join(map(str, args.shape))}")
    for option, value, least in (("--batch", args.batch, 1), ("--repeats", args.repeats, 1),
                                 ("--warmup", args.warmup, 0), ("--threads", args.threads, 1)):
        if value is not None and value < least:
            raise ValueError(f"{option} must be >= {least}, got {value}")
    if min(args.steps) < 1:
        raise ValueError(f"--steps must be step counts >= 1, got {' '.join(map(str, args.steps))}")


def _benchmark(args: argparse.Namespace) -> int:
    from .. import kernels
    from ..benchmark import BenchmarkReport, format_report, matmul_ceiling, measure_inference

    _check_arguments(args)
    torch, device, model, dtype = _setup(args)
    report = BenchmarkReport(
        config=str(args.config), shape=args.shape, batch=args.batch, device=str(device), dtype=args.amp,
        threads=torch.get_num_threads(), torch_version=torch.__version__,
        ceiling_gflops=matmul_ceiling(device, dtype or torch.float32) / 1e9,
    )
    report.rows = measure_inference(model, args.shape, args.steps, batch=args.batch, device=device,
                                    repeats=args.repeats, warmup=args.warmup, amp_dtype=dtype)
    report.notes.append(f"encoder: channels_last={args.channels_last}, compile={args.compile}")
    if device.type == "cuda":
        from ..runtime import describe_tf32

        report.notes.append(f"CUDA float32: {describe_tf32()} (--tf32 / --no-tf32)")
    report.notes.append(f"decoder: {'module path' if args.module_decoder else 'chunked inference path'}; "
                        f"latency = median of {args.repeats} after {args.warmup} warm-up")
    gather = kernels.describe(kernels.gather_kernel(torch.zeros(1, device=device)))
    report.notes.append(f"deformable gather: {gather} (DDPSEG_NATIVE=0 / DDPSEG_TRITON=0 switch the kernels off)")
    del model
    if args.train:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_train_worker, args=(args, queue))
        proc.start()
        report.train = queue.get()
        proc.join()
        report.notes.append("training step measured in a fresh process (its own peak memory)")
    reference = json.loads(args.reference.read_text()) if args.reference else None
    print(format_report(report, reference))
    if args.json:
        args.json.write_text(json.dumps({"report": report.__dict__ | {"rows": [r.__dict__ for r in report.rows]}}, indent=2, default=str))
    return 0
