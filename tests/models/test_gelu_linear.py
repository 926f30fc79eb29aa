"""gelu_linear: ``linear(gelu(h))`` that saves only ``h`` for the backward, with autograd's gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpseg.models.backbones.layers import gelu_linear


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (13, 24)])
def test_output_and_gradients_equal_autograd(dtype, shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(shape[-1], 6).to(dtype)
    h = torch.randn(shape, dtype=dtype, requires_grad=True)
    out = gelu_linear(h, linear)
    assert "GeluLinear" in type(out.grad_fn).__name__
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = (h.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone())
    h.grad = None
    linear.zero_grad()
    ref = linear(F.gelu(h))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ref.backward(grad)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for got, expected in zip(ours, (h.grad, linear.weight.grad, linear.bias.grad)):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_keeps_one_hidden_map_instead_of_two():
    linear = torch.nn.Linear(64, 16)
    h = torch.randn(4096, 64, requires_grad=True)
    ours = _saved_bytes(lambda: gelu_linear(h, linear))
    plain = _saved_bytes(lambda: linear(F.gelu(h)))
    hidden = h.numel() * 4
    assert ours < hidden + 64 * 16 * 4 + 1024 < plain, (ours, plain)


def test_frozen_weights_and_plain_path_without_grad_or_under_autocast():
    linear = torch.nn.Linear(8, 3).requires_grad_(False)
    h = torch.randn(5, 8, requires_grad=True)
    gelu_linear(h, linear).sum().backward()  # only the input gradient is wanted
    torch.testing.assert_close(h.grad, torch.autograd.grad(linear(F.gelu(h)).sum(), h)[0], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert gelu_linear(h, linear).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gelu_linear(h, linear.requires_grad_(True))
    assert "GeluLinear" not in type(out.grad_fn).__name__ and out.dtype == torch.bfloat16
