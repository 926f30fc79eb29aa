"""Training-step time and peak memory of the full DDP ConvNeXt-T Cityscapes config at batch 1, 512x1024.

One step = forward_train (backbone, neck, one noised decoder pass, auxiliary head) + backward + AdamW step with
the config's paramwise rules, on random images and labels. Reports the median of ``--steps`` timed steps
after ``--warmup`` untimed ones, and the peak memory: the process's peak resident set size on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU. (``ddpseg benchmark CONFIG --train`` times a step too, with a plain
AdamW and FLOP counts; this one takes the step exactly as ``ddpseg train`` does.)

    python benchmarks/train_step.py                    # CPU, and CUDA when available
    python benchmarks/train_step.py --devices cpu --steps 3 --warmup 1 --threads 2
    python benchmarks/train_step.py --quickstart       # `ddpseg quickstart`: final mIoU and wall time
    python benchmarks/train_step.py --devices cpu --compare   # also the plain-autograd path, same run
    python benchmarks/train_step.py --devices cpu --compare-native   # also fused without the gather kernels

Each row is measured in a fresh process, so its peak memory is its own. ``--compare`` adds a row with
the fused training paths switched off (decoder layers under plain autograd, PyTorch's depthwise-conv
backward): the same model and step, as the original computes it. ``--compare-native`` adds a fused row
with the deformable-attention kernels switched off (``DDPSEG_NATIVE=0 DDPSEG_TRITON=0``: corners +
embedding_bag and two sparse products, or index_add_ on a GPU, instead). The path column says which ran
("+ native" or "+ triton" where a kernel did).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpseg import kernels
from ddpseg.benchmark import matmul_ceiling, peak_memory_mib, timed
from ddpseg.config import Config
from ddpseg.engine.distributed import revert_sync_batchnorm
from ddpseg.engine.optimizer import build_optimizer
from ddpseg.engine.trainer import AMP_DTYPES, parse_losses
from ddpseg.models.backbones.layers import DepthwiseConv2d
from ddpseg.models.build import build_model
from ddpseg.runtime import device_argument, tune_cpu_allocator

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(CONFIG), help="training config (default: DDP ConvNeXt-T Cityscapes)")
    p.add_argument("--devices", nargs="+", type=device_argument, help="cpu, cuda ... (default: cpu, plus cuda when available)")
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"), help="crop size")
    p.add_argument("--batch", type=int, default=1, help="images per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), help="autocast dtype")
    p.add_argument("--compare", action="store_true", help="also measure with the fused training paths off")
    p.add_argument("--compare-native", action="store_true", help="also measure fused without the gather kernels")
    p.add_argument("--quickstart", action="store_true", help="run `ddpseg quickstart` instead and report it")
    p.add_argument("--out", help="--quickstart output folder (default: a temporary one)")
    args = p.parse_args()
    args.devices = [str(d) for d in args.devices] if args.devices else None  # checked by argparse, not in a worker
    return args


def measure(config: str, device_name: str, args: argparse.Namespace, fused: bool, use_native: bool = True) -> dict:
    """One training step as the trainer takes it: the config's optimizer (paramwise rules), per-process BN."""
    if not use_native:  # a fresh process per row: the switches stay in it
        os.environ["DDPSEG_NATIVE"] = "0"
        os.environ["DDPSEG_TRITON"] = "0"
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as `ddpseg train` does
    DepthwiseConv2d.fast_backward = fused
    device = parse_device(device_name, option="--devices")
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(build_model(cfg.model)).to(device).train()
    model.decode_head.fused_training = fused
    optimizer = build_optimizer(model, cfg.optimizer)
    h, w = args.size
    img = torch.randn(args.batch, 3, h, w, device=device)
    gt = torch.randint(0, model.num_classes, (args.batch, 1, h, w), device=device)
    dtype = AMP_DTYPES.get(args.amp) if args.amp else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = parse_losses(model.forward_train(img, gt))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, args.steps, args.warmup)
    ceiling = matmul_ceiling(device) / 1e9  # this machine's float32 GEMM rate right now: shared hosts drift
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    path = "fused" if fused else "plain autograd"
    kernel = kernels.gather_kernel(img) if fused else None
    if kernel is not None:
        path += " + " + kernel.__name__.split(".")[-1].replace("triton_msda", "triton")
    return {"device": name, "path": path, "median": seconds,
            "memory": peak_memory_mib(device), "params": sum(p.numel() for p in model.parameters()),
            "ceiling": ceiling}


def train_step_table(args: argparse.Namespace) -> None:
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    jobs = [(args.config, d, args, True, True) for d in devices]
    if args.compare_native:
        jobs += [(args.config, d, args, True, False) for d in devices]
    if args.compare:
        jobs += [(args.config, d, args, False, True) for d in devices]
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for job in jobs:  # one fresh process per row: its own peak memory
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(measure, job))
    print(f"\nconfig {Path(args.config).name}: batch {args.batch}, {args.size[0]}x{args.size[1]}, amp {args.amp}, "
          f"torch {torch.__version__}, {rows[0]['params'] / 1e6:.1f}M parameters; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"| {'device':<34} | {'path':<16} | training step (s) | peak memory (MiB) | matmul GFLOP/s |")
    print(f"|{'-' * 36}|{'-' * 18}|-------------------|-------------------|----------------|")
    for r in rows:
        kind = "process RSS" if r["device"].startswith("cpu") else "CUDA alloc"
        print(f"| {r['device']:<34} | {r['path']:<16} | {r['median']:17.3f} | {r['memory']:6.0f} {kind:<11}| "
              f"{r['ceiling']:14.0f} |")
    print("matmul GFLOP/s: a 4096² float32 matmul measured in the same process right after the steps (the "
          "machine's speed at that moment)")


def quickstart_table(args: argparse.Namespace) -> None:
    from ddpseg.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "quickstart")
        start = time.perf_counter()
        if main(["quickstart", "--out", str(out)]) != 0:
            raise SystemExit("quickstart failed")
        wall = time.perf_counter() - start
        results = json.loads((out / "results.json").read_text())
    print(f"\n| quickstart | iterations | mIoU (%) | aAcc (%) | training (s) | wall (s) | torch       | threads |")
    print("|------------|------------|----------|----------|--------------|----------|-------------|---------|")
    print(f"| {results['device']:<10} | {results['iters']:10d} | {100 * results['mIoU']:8.2f} | "
          f"{100 * results['aAcc']:8.2f} | {results['train_s']:12.0f} | {wall:8.0f} | {torch.__version__:<11} | "
          f"{results['threads']:7d} |")


def main() -> None:
    args = parse_args()
    if args.quickstart:
        quickstart_table(args)
    else:
        train_step_table(args)
    print(f"\ncommand: python {shlex.join(sys.argv)}")


if __name__ == "__main__":
    main()
