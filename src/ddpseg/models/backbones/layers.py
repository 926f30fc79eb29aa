"""Pieces the backbones share: stochastic depth, mmcv-style norm/act configs, a depthwise conv with a fast backward."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["DropPath", "drop_path", "layer_norm_settings", "check_gelu", "DepthwiseConv2d", "gelu_linear"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob`` (stochastic depth).

    The draw and the rescaling follow mmcv/timm exactly (``keep + U[0, 1)`` floored, then
    ``x / keep * mask``) so that a seeded training run draws the same masks as the original.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor()
    return x.div(keep_prob) * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; an identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def layer_norm_settings(
    norm_cfg: Optional[dict], default_eps: float, allowed: tuple[str, ...], where: str
) -> tuple[float, bool]:
    """Read ``(eps, requires_grad)`` from an mmcv LayerNorm config such as ``dict(type='LN', eps=1e-6)``.

    ``None`` means the default. Other norm types are refused: the backbones' state dicts and numerics
    are defined for LayerNorm only.
    """
    if norm_cfg is None:
        return default_eps, True
    cfg = dict(norm_cfg)
    kind = cfg.pop("type", allowed[0])
    if kind not in allowed:
        raise ValueError(f"{where}: norm_cfg type {kind!r} is not supported; expected one of {allowed}")
    eps = float(cfg.pop("eps", default_eps))
    requires_grad = bool(cfg.pop("requires_grad", True))
    if cfg:
        raise ValueError(f"{where}: unknown norm_cfg keys {sorted(cfg)} in {norm_cfg!r}")
    return eps, requires_grad


def check_gelu(act_cfg: Optional[dict], where: str) -> None:
    """Accept ``None`` or ``dict(type='GELU')`` (the only activation the published models use)."""
    if act_cfg is None:
        return
    cfg = dict(act_cfg)
    if cfg.pop("type", "GELU") != "GELU" or cfg:
        raise ValueError(f"{where}: act_cfg {act_cfg!r} is not supported; expected dict(type='GELU')")


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise, stride-1, 'same'-padded ``nn.Conv2d`` (ConvNeXt's 7×7) whose backward is two forward convs.

    Same parameters, forward and state-dict keys as ``nn.Conv2d(C, C, k, padding=k // 2, groups=C)``.
    PyTorch's CPU backward for depthwise convolutions is several times slower than its forward (a
    ConvNeXt-T training step spent 0.86 s there at 512×1024); here, under autograd, the input
    gradient is the depthwise conv of the output gradient with the flipped kernel, and the weight
    gradient is each input channel correlated with its output-gradient channel, itself a grouped
    convolution (the gradient map as the kernel). Exact up to float summation order (tested in float64).
    Used on the CPU; elsewhere the plain ``nn.Conv2d`` path runs.
    """

    fast_backward = True  # class-wide switch (False: PyTorch's own conv backward), for A/B benchmarks

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"DepthwiseConv2d needs an odd kernel_size, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
        # measured on the CPU only; CUDA's own depthwise backward is a dedicated kernel
        if needs_grad and self.fast_backward and x.device.type == "cpu" and not autocast and x.dim() == 4:
            return _DepthwiseConv.apply(x, self.weight, self.bias)
        return super().forward(x)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        channels, _, k, _ = weight.shape
        pad = k // 2
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), padding=pad, groups=channels)
        if ctx.needs_input_grad[1]:
            batch, _, height, width = x.shape
            # per (image, channel) plane: correlate the padded input with the gradient map → (k, k)
            planes = F.pad(x, (pad, pad, pad, pad)).reshape(1, batch * channels, height + 2 * pad, width + 2 * pad)
            kernels = grad.reshape(batch * channels, 1, height, width)
            grad_w = F.conv2d(planes, kernels, groups=batch * channels).view(batch, channels, 1, k, k).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def gelu_linear(h: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(F.gelu(h))`` (exact GELU) that, under autograd, keeps only ``h`` for the backward.

    Plain autograd saves both the GELU input (for its derivative) and its output (for the Linear's
    weight gradient): two tensors of the MLP's hidden width. This recomputes GELU(h) in the backward
    instead, an element-wise pass, and frees one of them: ≈ 360 MB of a ConvNeXt-T training step at
    512×1024. Gradients equal autograd's up to float rounding (tested). Falls back to the plain
    expression without grad, under autocast, or when input and weight dtypes differ.
    """
    autocast = torch.is_autocast_enabled(h.device.type) if h.device.type in ("cpu", "cuda") else False
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or linear.weight.requires_grad)
    if not needs_grad or autocast or not h.is_floating_point() or h.dtype != linear.weight.dtype:
        return linear(F.gelu(h))
    return _GeluLinear.apply(h, linear.weight, linear.bias)


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        g_h = g_w = g_b = None
        if ctx.needs_input_grad[1]:
            g_w = grad2.t().mm(F.gelu(h).reshape(-1, h.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b = grad2.sum(0)
        if ctx.needs_input_grad[0]:
            g_h = torch.ops.aten.gelu_backward(grad2.mm(weight).view(h.shape), h)
        return g_h, g_w, g_b
