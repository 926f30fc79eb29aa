"""Time the single-level deformable gather alone: the portable path (corners + ``embedding_bag``, backward by
autograd) against the fused kernel of the device (native C++ on CPU, Triton on CUDA), forward and backward.

    python benchmarks/gather_kernels.py [--device cpu|cuda] [--size 128 256] [--blocks 8 16 32 64]

The problem is one decoder layer's gather of the published ``ddp_convnext_t`` at 512×1024: a 128×256 map,
8 heads × 4 points, 32 channels per head, one query per pixel, offsets of a few pixels (as trained models
have) plus 5 % of samples far outside the map. ``--blocks`` (CUDA) times the Triton kernels at several
queries-per-program sizes (``ddpseg.triton_msda.BLOCK_QUERIES``), each checked against the portable output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ddpseg.runtime import device_argument


def make_problem(device, height, width, heads, points, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = height * width
    samp = torch.randn(n, heads * points * 3, generator=gen)
    samp[:, : heads * points * 2] *= 3.0  # offsets of a few pixels
    far = torch.rand(n, generator=gen) < 0.05
    samp[far, : heads * points * 2] *= 100.0
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ref = torch.stack(((xs.reshape(-1) + 0.5) / width, (ys.reshape(-1) + 0.5) / height), -1)
    table = torch.zeros(heads, height + 2, width + 2, dim)
    table[:, 1:-1, 1:-1] = torch.randn(heads, height, width, dim, generator=gen)
    grad = torch.randn(n, heads * dim, generator=gen)
    return [t.to(device) for t in (samp, ref, table.view(-1, dim), grad)]


def portable(samp, ref, table, heads, points, height, width):
    """Corners + embedding_bag over the head-major table (differentiable in samp and table)."""
    from ddpseg.models.ms_deform_attn import single_level_corners

    index, weight = single_level_corners(samp, ref, heads, points, height, width)
    pixel, head = index // heads, index % heads  # corners number rows pixel-major
    rows = head * ((height + 2) * (width + 2)) + pixel
    return F.embedding_bag(rows, table, per_sample_weights=weight.reshape(rows.shape), mode="sum").view(samp.shape[0], -1)


def timed(fn, device, repeats, warmup=2):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", type=device_argument, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", nargs=2, type=int, default=[128, 256], metavar=("H", "W"))
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--dim", type=int, default=32, help="channels per head")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--blocks", nargs="+", type=int, default=None, help="Triton queries per program to try (CUDA)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ddpseg import kernels

    device = args.device
    height, width = args.size
    heads, points = args.heads, args.points
    samp, ref, table, grad = make_problem(device, height, width, heads, points, args.dim)
    shape = (heads, points, height, width)
    attention = samp[:, heads * points * 2 :].reshape(-1, heads, points).softmax(-1).contiguous()

    def portable_forward():
        return portable(samp, ref, table, *shape)

    samp_g, table_g = samp.clone().requires_grad_(), table.clone().requires_grad_()

    def portable_backward():  # forward + backward: autograd needs the graph
        portable(samp_g, ref, table_g, *shape).backward(grad)
        samp_g.grad = table_g.grad = None

    rows = [("portable (corners + embedding_bag)", timed(portable_forward, device, args.repeats),
             timed(portable_backward, device, args.repeats), "forward + backward")]
    want = portable_forward()
    kernel = kernels.gather_kernel(samp)
    if kernel is None:
        print(f"no fused kernel for {device} here (DDPSEG_NATIVE / DDPSEG_TRITON, compiler, Triton?)", file=sys.stderr)
    else:
        blocks = [None]
        if args.blocks and kernel.__name__ == "ddpseg.triton_msda":
            blocks = args.blocks
        default_block = getattr(kernel, "BLOCK_QUERIES", None)
        for block in blocks:
            if block is not None:
                kernel.BLOCK_QUERIES = block
            try:
                got = kernel.msda_forward(samp, attention, ref, table, *shape)
                error = (got - want).abs().max().item()
                fwd = timed(lambda: kernel.msda_forward(samp, attention, ref, table, *shape), device, args.repeats)
                bwd = timed(lambda: kernel.msda_backward(samp, attention, ref, table, grad, *shape), device, args.repeats)
            finally:
                if default_block is not None:
                    kernel.BLOCK_QUERIES = default_block
            label = kernels.describe(kernel) + (f", {block} queries/program" if block is not None else "")
            rows.append((label, fwd, bwd, f"backward alone; max |forward − portable| {error:.2g}"))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"command: python benchmarks/gather_kernels.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"torch {torch.__version__}, {name}; {height}×{width} map, {heads} heads × {points} points × {args.dim} "
          f"channels, {height * width} queries; median of {args.repeats}\n")
    print("| gather | forward (ms) | backward (ms) | note |")
    print("|---|---:|---:|---|")
    for label, fwd, bwd, note in rows:
        print(f"| {label} | {fwd:.2f} | {bwd:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
