"""Test helpers: a mini DDP whose decoder has non-trivial offsets and attention, with features and noise; a
single-level gather problem for the fused kernels."""

from __future__ import annotations

import torch

from ddpseg.models import fast_decoder
from ddpseg.models.build import build_model


def perturbed_model_and_inputs(mini_model_cfg, monkeypatch):
    """(model in eval mode with randsteps=2, features (2, 64, 13, 17), noise (4, 64, 13, 17)); the chunked
    decoder runs several chunks, the last one partial."""
    model = build_model(dict(mini_model_cfg, randsteps=2)).eval()
    with torch.no_grad():  # non-trivial offsets and attention (they start at zero)
        for p in model.decode_head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    monkeypatch.setattr(fast_decoder, "TARGET_TOKENS_PER_CHUNK", 40)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 13, 17, generator=gen)
    noise = torch.randn(4, 64, 13, 17, generator=gen)
    return model, x, noise


def gather_problem(dtype, height=9, width=13, heads=4, points=3, dim=32, batch=2, seed=0):
    """Raw projections whose offsets reach far past the borders, a batched pixel-major table and its
    head-major copy (what the kernel reads)."""
    gen = torch.Generator().manual_seed(seed)
    n = height * width
    samp = torch.randn(n, heads * points * 3, generator=gen, dtype=dtype) * 4
    samp[: n // 5, : heads * points * 2] *= 25  # some samples land outside the map entirely
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ref = torch.stack(((xs.reshape(-1) + 0.5) / width, (ys.reshape(-1) + 0.5) / height), -1).to(dtype)
    table = torch.zeros(batch, height + 2, width + 2, heads, dim, dtype=dtype)
    table[:, 1:-1, 1:-1] = torch.randn(batch, height, width, heads, dim, generator=gen, dtype=dtype)
    head_major = table.permute(0, 3, 1, 2, 4).contiguous()
    return samp, ref, table, head_major, (heads, points, height, width)


def softmax_attention(samp, heads, points):
    return samp[:, heads * points * 2 :].reshape(samp.shape[0], heads, points).softmax(-1)
