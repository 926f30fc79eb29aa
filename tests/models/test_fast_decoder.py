"""The chunked inference decoder computes exactly what the module path computes."""

from __future__ import annotations

import pytest
import torch

from ddpseg import kernels, triton_msda
from ddpseg.models import fast_decoder
from ddpseg.models.build import build_model

from ..triton_kernel import triton_device
from .decoder_inputs import perturbed_model_and_inputs


def test_chunked_decoder_matches_the_module_path_for_batches_and_odd_sizes(mini_model_cfg, monkeypatch):
    model, x, noise = perturbed_model_and_inputs(mini_model_cfg, monkeypatch)
    outs = []
    for chunked in (False, True):
        model.chunked_decoder = chunked
        outs.append(model.sample_features(x, steps=3, noise=noise))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)


def test_chunked_decoder_with_the_triton_kernel_matches_the_module_path(mini_model_cfg, monkeypatch):
    device = triton_device()
    model, x, noise = perturbed_model_and_inputs(mini_model_cfg, monkeypatch)
    model, x, noise = model.to(device), x.to(device), noise.to(device)
    monkeypatch.setattr(kernels, "gather_kernel", lambda *tensors: triton_msda)  # also on the interpreter's CPU
    monkeypatch.setattr(fast_decoder, "TARGET_TOKENS_PER_CHUNK", 120)  # 2 chunks: fewer interpreted launches
    calls = []
    forward = triton_msda.msda_forward
    monkeypatch.setattr(triton_msda, "msda_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    outs = []
    for chunked in (False, True):
        model.chunked_decoder = chunked
        outs.append(model.sample_features(x, steps=2, noise=noise))
    assert calls, "the Triton kernel did not run"
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)


def test_chunked_path_is_skipped_when_training_needs_gradients(mini_model_cfg):
    model = build_model(mini_model_cfg).train()
    with torch.enable_grad():
        assert not fast_decoder.can_decode_chunked(model.decode_head)
    model.eval()
    assert fast_decoder.can_decode_chunked(model.decode_head)


def test_multi_stage_merging_mixes_each_level_before_resizing_exactly_like_the_concatenation():
    import torch.nn.functional as F

    from ddpseg.models.necks import MultiStageMerging

    merge = MultiStageMerging([4, 4, 4], 6, norm_cfg=dict(type="GN", num_groups=2)).double().eval()
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 4, 12 // s, 20 // s, generator=gen, dtype=torch.float64) for s in (1, 2, 4)]
    resized = [F.interpolate(x, size=(12, 20), mode="bilinear", align_corners=False) for x in inputs]
    torch.testing.assert_close(merge(inputs), merge.conv(torch.cat(resized, 1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_inference_runs_chunked_and_is_no_further_from_float32_than_the_module_path(
    mini_model, golden, monkeypatch, dtype
):
    """Under autocast the chunked decoder keeps float32 buffers (sampling projections, gather, residuals): its
    logits must be at least as close to float32 as the module path's under the same autocast."""
    img, noise = golden["inputs"]["main"], golden["main"]["noise"]
    ref = mini_model.sample_logits(img, steps=1, noise=noise)
    calls = []
    chunked = fast_decoder.decode_tokens_chunked
    monkeypatch.setattr("ddpseg.models.segmentor.decode_tokens_chunked", lambda *a: calls.append(1) or chunked(*a))
    errors = {}
    try:
        for path in (False, True):
            mini_model.chunked_decoder = path
            with torch.autocast("cpu", dtype=dtype):
                assert fast_decoder.can_decode_chunked(mini_model.decode_head)
                out = mini_model.sample_logits(img, steps=1, noise=noise)
            assert out.shape == (1, 19, 128, 256)
            errors[path] = (out.float() - ref).abs().mean().item()
    finally:
        mini_model.chunked_decoder = True
    assert calls == [1]  # the chunked path ran once, under autocast
    assert 0 < errors[True] <= errors[False], errors
