"""Training-pipeline throughput on synthetic 1024x2048 Cityscapes-like frames.

Runs the training pipeline of configs/_base_/datasets/cityscapes.py (resize 0.5-2x of 2048x1024,
crop 512x1024, flip, photometric distortion, normalise, pad) through ddpseg's training loader and
prints samples/s per worker count, then the mean time of each transform in one process.

    python benchmarks/data_pipeline.py                 # 2 workers, as the issue asks
    python benchmarks/data_pipeline.py --workers 0 2 4 --batches 30
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ddpseg.config import Config
from ddpseg.data import build_dataloader, build_dataset
from ddpseg.data.synthetic import make_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs/_base_/datasets/cityscapes.py"), help="config with data.train")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="loader worker counts to measure")
    p.add_argument("--samples-per-gpu", type=int, default=2)
    p.add_argument("--images", type=int, default=8, help="synthetic frames to write")
    p.add_argument("--batches", type=int, default=20, help="batches timed per worker count (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="batches before timing starts (worker start-up)")
    p.add_argument("--breakdown", type=int, default=8, help="samples for the per-transform breakdown (0: skip)")
    return p.parse_args()


def loader_rate(dataset, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(samples/s, ms per sample) of the training loader with ``workers`` workers."""
    batches = iter(build_dataloader(dataset, args.samples_per_gpu, workers, seed=0))
    for _ in range(args.warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    elapsed = time.perf_counter() - start
    samples = args.batches * args.samples_per_gpu
    return samples / elapsed, 1000 * elapsed / samples


def transform_times(dataset, count: int) -> list[tuple[str, float]]:
    """Mean ms of each pipeline step over ``count`` samples, in this process."""
    steps = dataset.pipeline.transforms
    totals = np.zeros(len(steps))
    for i in range(count):
        results = {"img_info": dataset.img_infos[i % len(dataset)], "ann_info": dataset.img_infos[i % len(dataset)]["ann"]}
        dataset.pre_pipeline(results)
        rng = np.random.default_rng(i)
        for k, step in enumerate(steps):
            start = time.perf_counter()
            results = step(results, rng)
            totals[k] += time.perf_counter() - start
    return [(type(s).__name__, 1000 * t / count) for s, t in zip(steps, totals)]


def main() -> int:
    args = parse_args()
    train_cfg = Config.fromfile(args.config).to_dict()["data"]["train"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_synthetic_cityscapes(tmp, num_train=args.images, num_val=0, size=(1024, 2048), write_label_ids=False)
        print(f"wrote {args.images} synthetic 1024x2048 frames in {time.perf_counter() - start:.1f} s")
        dataset = build_dataset(dict(train_cfg, data_root=str(root)))
        rows = [(w, *loader_rate(dataset, w, args)) for w in args.workers]
        breakdown = transform_times(dataset, args.breakdown) if args.breakdown else []

    print(f"\nTraining pipeline of {os.path.relpath(args.config, REPO)}, samples_per_gpu={args.samples_per_gpu}, "
          f"{args.batches} batches timed")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"OpenCV {cv2.__version__}\n")
    print("| workers | samples/s | ms/sample |")
    print("|--------:|----------:|----------:|")
    for workers, rate, ms in rows:
        print(f"| {workers:7d} | {rate:9.2f} | {ms:9.1f} |")
    if breakdown:
        print(f"\nPer transform, one process, mean of {args.breakdown} samples:\n")
        print("| transform | ms |")
        print("|-----------|---:|")
        for name, ms in breakdown:
            print(f"| {name} | {ms:.1f} |")
        print(f"| total | {sum(ms for _, ms in breakdown):.1f} |")
    print("\ncommand: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
