"""DepthwiseConv2d: nn.Conv2d's forward and keys, a faster backward with the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpseg.models.backbones.layers import DepthwiseConv2d


@pytest.mark.parametrize("shape,kernel", [((2, 5, 9, 13), 7), ((1, 3, 2, 6), 7), ((3, 4, 8, 8), 3)])
def test_gradients_equal_conv2d_autograd_float64(shape, kernel):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(shape[1], kernel).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    assert "Depthwise" in type(out.grad_fn).__name__
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = (x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    x.grad = None
    conv.zero_grad()
    ref = F.conv2d(x, conv.weight, conv.bias, padding=kernel // 2, groups=shape[1])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ref.backward(grad)
    for got, expected in zip(ours, (x.grad, conv.weight.grad, conv.bias.grad)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_same_state_dict_as_conv2d_and_plain_path_without_grad():
    conv = DepthwiseConv2d(6, 7)
    plain = torch.nn.Conv2d(6, 6, 7, padding=3, groups=6)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 6, 10, 12)
    with torch.no_grad():
        out = conv(x)
        assert out.grad_fn is None
        torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="odd kernel_size"):
        DepthwiseConv2d(4, 4)
