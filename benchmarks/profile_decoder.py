"""Where a config's denoising steps spend their time: torch.profiler over the decoder steps of one image,
operators ranked by their own time on the device (CUDA kernels on a GPU, CPU time on the CPU).

    python benchmarks/profile_decoder.py [CONFIG] [--device cpu|cuda] [--shape 512 1024] [--steps 3]
                                         [--amp bf16|fp16] [--rows 20]

The model has random weights (the time does not depend on them); the encoder runs once outside the profile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ddpseg.runtime import AMP_CHOICES, autocast_for, device_argument

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive integer")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    p.add_argument("--device", type=device_argument, default="cpu")
    p.add_argument("--shape", type=positive, nargs=2, default=(512, 1024), metavar=("H", "W"))
    p.add_argument("--steps", type=positive, default=3)
    p.add_argument("--amp", choices=sorted(AMP_CHOICES), default=None)
    p.add_argument("--rows", type=positive, default=20)
    p.add_argument("--threads", type=positive, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ddpseg.config import Config
    from ddpseg.models.build import build_model

    device = args.device
    model = build_model(Config.fromfile(args.config).model).to(device).eval()
    img = torch.randn(1, 3, *args.shape, device=device)
    on_gpu = device.type == "cuda"
    with torch.no_grad(), autocast_for(device.type, args.amp):
        x = model.extract_feat(img)
        noise = torch.randn(model.randsteps, *x.shape[1:], device=device, dtype=x.dtype)
        for _ in range(2):  # warm-up: kernel compilation, the Triton self-check, allocator
            model.sample_features(x, steps=args.steps, noise=noise)
        if on_gpu:
            torch.cuda.synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=activities) as prof:
            model.sample_features(x, steps=args.steps, noise=noise)
            if on_gpu:
                torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    print(f"command: python benchmarks/profile_decoder.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"torch {torch.__version__}, device {device}, input 1×3×{args.shape[0]}×{args.shape[1]}, {args.steps} steps, "
          f"amp {args.amp or 'fp32'}\n")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
