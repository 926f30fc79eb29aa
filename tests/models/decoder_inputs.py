"""Test helper: a mini DDP whose decoder has non-trivial offsets and attention, with features and noise."""

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
