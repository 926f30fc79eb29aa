"""Pieces both backbones share: stochastic depth and the reading of mmcv-style norm/act configs."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["DropPath", "drop_path", "layer_norm_settings", "check_gelu"]


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
