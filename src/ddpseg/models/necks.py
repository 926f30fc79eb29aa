"""The neck: an FPN (GroupNorm, no activation) followed by MultiStageMerging to one stride-4 map."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvNormAct

__all__ = ["FPN", "MultiStageMerging", "DDPNeck"]


class FPN(nn.Module):
    """Feature pyramid: 1×1 laterals, top-down nearest upsampling and addition, 3×3 output convs.

    Only what the DDP configs use: one output per input level, no extra levels.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)
            for _ in in_channels
        )

    def forward(self, inputs: Sequence[Tensor]) -> List[Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


class MultiStageMerging(nn.Module):
    """Resize every level to the first (stride 4), concatenate, fuse with a 1×1 conv + norm."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        kernel_size: int = 1,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.align_corners = align_corners
        self.conv = ConvNormAct(sum(in_channels), out_channels, kernel_size, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """conv1×1(cat[resize(x_i)]) computed as Σ resize(W_i · x_i): bilinear resizing and a 1×1 conv are
        both linear and commute, so each level is mixed at its own (smaller) resolution and the 4·C-channel
        full-resolution concatenation is never built. Same result up to float rounding (tested)."""
        conv = self.conv.conv
        if conv.kernel_size != (1, 1):
            size = inputs[0].shape[2:]
            resized = [F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in inputs]
            return self.conv(torch.cat(resized, dim=1))
        size = inputs[0].shape[2:]
        weights = conv.weight.split(self.in_channels, dim=1)
        out = None
        for x, weight in zip(inputs, weights):
            mixed = F.conv2d(x, weight)
            if mixed.shape[2:] != size:
                mixed = F.interpolate(mixed, size=size, mode="bilinear", align_corners=self.align_corners)
            out = mixed if out is None else out + mixed
        if conv.bias is not None:
            out = out + conv.bias.view(1, -1, 1, 1)
        return self.conv.act(self.conv.norm(out))


class DDPNeck(nn.Module):
    """FPN then MultiStageMerging: backbone maps (1/4 … 1/32) → one (B, C, H/4, W/4) map."""

    def __init__(self, fpn: FPN, merge: MultiStageMerging) -> None:
        super().__init__()
        self.fpn = fpn
        self.merge = merge

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.merge(self.fpn(feats))
