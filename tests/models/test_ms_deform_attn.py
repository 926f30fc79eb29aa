"""The fast deformable-attention paths agree with the grid_sample reference (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from ddpseg.models.ms_deform_attn import ms_deform_attn_core, ms_deform_attn_gather


def _inputs(shapes, batch=2, heads=4, dim=8, points=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, dim, generator=gen, dtype=dtype)
    # locations spill over every border so zero padding is exercised
    loc = torch.rand(batch, 7, heads, len(shapes), points, 2, generator=gen, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(batch, 7, heads, len(shapes), points, generator=gen, dtype=dtype).softmax(-1)
    return value, loc, weights


@pytest.mark.parametrize("shapes", [[(5, 7)], [(6, 9), (3, 5)], [(1, 1)]])
def test_gather_equals_the_grid_sample_reference(shapes):
    value, loc, weights = _inputs(shapes)
    ref = ms_deform_attn_core(value, shapes, loc, weights)
    torch.testing.assert_close(ms_deform_attn_gather(value, shapes, loc, weights), ref, rtol=0, atol=1e-12)


def test_gather_gradients_equal_the_reference_for_values_locations_and_weights():
    shapes = [(6, 9), (3, 5)]
    grads = []
    for fn in (ms_deform_attn_core, ms_deform_attn_gather):
        value, loc, weights = (t.requires_grad_() for t in _inputs(shapes, seed=1))
        (fn(value, shapes, loc, weights) * torch.linspace(-1, 1, 4 * 8, dtype=torch.float64)).sum().backward()
        grads.append((value.grad, loc.grad, weights.grad))
    for ours, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_gather_in_float32_stays_within_rounding_of_the_reference():
    value, loc, weights = _inputs([(32, 64)], batch=1, heads=8, dim=32, points=4, dtype=torch.float32)
    diff = (ms_deform_attn_gather(value, [(32, 64)], loc, weights) - ms_deform_attn_core(value, [(32, 64)], loc, weights))
    assert diff.abs().max().item() < 2e-6


def test_set_sampler_swaps_the_core_and_none_restores_the_default():
    from ddpseg.models import ms_deform_attn as msda

    torch.manual_seed(0)
    attn = msda.MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=1, num_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    query = torch.randn(2, 6 * 8, 16)
    ref = msda.reference_points([(6, 8)], torch.device("cpu"))
    default = attn(query, None, ref, [(6, 8)])
    calls = []

    def reference(*args):
        calls.append(1)
        return ms_deform_attn_core(*args)

    try:
        msda.set_sampler(reference)
        swapped = attn(query, None, ref, [(6, 8)])
    finally:
        msda.set_sampler(None)
    assert calls and msda._sampler is msda.ms_deform_attn_gather
    torch.testing.assert_close(swapped, default, rtol=0, atol=1e-5)


def test_single_level_corners_written_out_backward_equals_autograd_float64():
    from ddpseg.models.ms_deform_attn import single_level_corners, single_level_corners_with_backward

    torch.manual_seed(0)
    heads, points, height, width, n = 3, 2, 5, 7, 40
    samp = (torch.randn(n, heads * points * 3, dtype=torch.float64) * 4).requires_grad_(True)  # many past the border
    ref = torch.rand(n, 2, dtype=torch.float64)
    index, weight = single_level_corners(samp, ref, heads, points, height, width, 11)
    grad = torch.randn_like(weight)
    (expected,) = torch.autograd.grad(weight, samp, grad)
    index2, weight2, backward = single_level_corners_with_backward(samp.detach(), ref, heads, points, height, width, 11)
    assert torch.equal(index2, index) and torch.equal(weight2, weight.detach())
    assert weight2.grad_fn is None
    torch.testing.assert_close(backward(grad), expected, rtol=1e-12, atol=1e-12)


def test_sampling_locations_stay_float32_in_the_module_path_under_autocast():
    """Under bf16 autocast the query reaching the decoder layers is bf16 (the training path and the module
    inference path). The offsets come from a bf16 product, but reference point + offset must be summed in
    float32: in bf16 a location in [0.5, 1) is rounded to 1/256 of the map, up to a pixel and a half here."""
    from ddpseg.models import ms_deform_attn as msda
    from ddpseg.models.heads import DeformableHeadWithTime

    torch.manual_seed(0)
    head = DeformableHeadWithTime(in_channels=32, num_classes=3, time_dims=16, num_layers=1, num_heads=4,
                                  ffn_channels=32, pos_num_feats=16).eval()
    with torch.no_grad():  # non-trivial offsets (they start as whole pixels, which bf16 holds exactly)
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    h, w = 2, 256
    query = torch.randn(1, h * w, 32).bfloat16()
    film = head.time_conditioning(torch.randn(1, 16))
    seen = []

    def recording(value, shapes, locations, weights):
        seen.append(locations)
        return ms_deform_attn_gather(value, shapes, locations, weights)

    try:
        msda.set_sampler(recording)
        with torch.no_grad():
            head.forward_tokens(query.float(), h, w, film)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                head.forward_tokens(query, h, w, film)
    finally:
        msda.set_sampler(None)
    expected, locations = seen
    assert locations.dtype == torch.float32
    error_px = ((locations - expected) * torch.tensor([w, h])).abs().max().item()
    assert error_px < 0.1, error_px  # the bf16 offsets' own rounding
