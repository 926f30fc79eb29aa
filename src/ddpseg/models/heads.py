"""Decode heads: the time-conditioned deformable-attention head of DDP and the FCN auxiliary head."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvNormAct, build_activation
from .ms_deform_attn import MultiScaleDeformableAttention, reference_points
from .train_decoder import can_fuse_layer, decoder_layer_train

__all__ = [
    "sine_positional_encoding",
    "seg_loss_and_accuracy",
    "DecoderLayer",
    "DeformableHeadWithTime",
    "FCNHead",
    "DecoderContext",
]


def sine_positional_encoding(
    height: int,
    width: int,
    num_feats: int,
    *,
    temperature: float = 10000,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
    offset: float = 0.0,
    device: Optional[torch.device] = None,
) -> Tensor:
    """DETR's sine/cosine encoding of (y, x) for an unpadded map: (1, 2·num_feats, H, W), y first."""
    ones = torch.ones((1, height, width), dtype=torch.float32, device=device)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    if normalize:
        y_embed = (y_embed + offset) / (y_embed[:, -1:, :] + eps) * scale
        x_embed = (x_embed + offset) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    # interleave sin of even and cos of odd frequencies: sin0, cos1, sin2, cos3, ...
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).view(1, height, width, -1)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).view(1, height, width, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H·W, K) tokens → (B, K, H, W), a view of a (B, H, W, K) contiguous tensor with canonical strides.

    ``tokens.transpose(1, 2).reshape(...)`` gives the same values, but for B = 1 with a batch stride of K
    instead of H·W·K, which ``F.interpolate`` does not recognise as channels-last: it then takes its NCHW
    path, ≈ 8× slower for a 19-class 512×1024 output here.
    """
    batch, _, classes = tokens.shape
    return tokens.reshape(-1, classes).view(batch, height, width, classes).permute(0, 3, 1, 2)


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) as a view of a (B, H, W, C) contiguous tensor, with canonical strides.

    ``contiguous(memory_format=torch.channels_last)`` is not enough: with B = 1 it accepts a batch
    stride of C instead of H·W·C, which ``F.interpolate`` does not treat as channels-last (see
    :func:`tokens_to_map`).
    """
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).contiguous().view(-1, c)  # copies only when x is not NHWC in memory
    return rows.view(b, h, w, c).permute(0, 3, 1, 2)


def seg_loss_and_accuracy(
    logits: Tensor, labels: Tensor, *, ignore_index: int = 255, loss_weight: float = 1.0, align_corners: bool = False
) -> Tuple[Tensor, Tensor]:
    """mmseg 0.x's pixel cross-entropy and top-1 accuracy (percent).

    Logits are resized (bilinear) to the label size. The loss is averaged over *all* pixels, ignored
    ones counting as zero (mmseg's default ``avg_non_ignore=False``), then weighted. As mmseg's
    ``force_fp32`` losses, all of it runs in float32 (at least) also under autocast, whose bf16/fp16
    logits are converted first; the gradient flows back to them in their dtype.
    """
    if logits.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(logits.device.type):
        with torch.autocast(logits.device.type, enabled=False):
            return seg_loss_and_accuracy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels,
                                         ignore_index=ignore_index, loss_weight=loss_weight, align_corners=align_corners)
    labels = labels.squeeze(1).long() if labels.ndim == 4 else labels.long()
    # Resized in channels-last layout (the small map is converted, not the full-size one), so that the
    # class axis is contiguous: the softmax, its backward and the argmax run on (pixels, classes) rows.
    logits = to_channels_last(logits)
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    loss = F.cross_entropy(rows, labels.reshape(-1), reduction="none", ignore_index=ignore_index).mean()
    with torch.no_grad():
        valid = labels != ignore_index
        pred = rows.detach().argmax(1).view_as(labels)
        correct = (pred == labels)[valid].float().sum() + torch.finfo(torch.float32).eps
        accuracy = correct * (100.0 / (valid.sum().item() + torch.finfo(torch.float32).eps))
    return loss_weight * loss, accuracy


class FFN(nn.Module):
    """Linear → act → dropout → Linear → dropout, plus the input (residual)."""

    def __init__(self, embed_dims: int, hidden: int, drop: float = 0.0, act_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden)
        self.act = build_activation(act_cfg or dict(type="GELU"))
        self.fc2 = nn.Linear(hidden, embed_dims)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DecoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention → LN → FFN → LN → time scale/shift.

    The time conditioning is FiLM-like: (scale, shift) = Linear(SiLU(h)), x ← x·(1 + scale) + shift.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_channels: int,
        time_dims: int,
        attn_drop: float = 0.0,
        ffn_drop: float = 0.0,
        act_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__()
        # registered in the original's order (attentions, time MLP, FFNs, norms): parameters() then lists them as
        # there, which fixes the summation order of gradient clipping and of the distributed all-reduce buckets
        self.attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points)
        self.attn_drop = nn.Dropout(attn_drop)
        self.time_proj = nn.Linear(time_dims, embed_dims * 2)
        self.ffn = FFN(embed_dims, ffn_channels, ffn_drop, act_cfg)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)

    def time_scale_shift(self, time_emb: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, time_dims) → scale, shift of shape (B, 1, C)."""
        scale, shift = self.time_proj(F.silu(time_emb))[:, None].chunk(2, dim=2)
        return scale, shift

    def forward(self, x: Tensor, ctx: "DecoderContext", scale: Tensor, shift: Tensor) -> Tensor:
        x = self.norm1(x + self.attn_drop(self.attn(x, ctx.pos, ctx.ref_points, ctx.spatial_shapes)))
        x = self.norm2(self.ffn(x))
        return torch.addcmul(shift, x, scale + 1)


@dataclass
class DecoderContext:
    """What the decoder needs that depends only on the feature-map size, computed once per size."""

    spatial_shapes: List[Tuple[int, int]]
    pos: Tensor  # (1, H·W, C)
    ref_points: Tensor  # (1, H·W, 1, 2)


class DeformableHeadWithTime(nn.Module):
    """DDP's decoder: N time-conditioned deformable-attention layers over the (fused) 1/4 map, then a 1×1 classifier.

    Args:
        in_channels: channels of the input map (= ``embed_dims``).
        num_classes: output classes.
        time_dims: size of the time embedding fed to every layer (4 × in_channels in DDP).
        num_layers, num_heads, num_points, ffn_channels: the encoder layers.
        pos_num_feats, pos_temperature, pos_normalize, pos_offset, pos_scale, pos_eps: sine positional encoding.
        attn_drop, ffn_drop: dropout inside the layers (0 in the published configs).
        dropout_ratio: dropout before the classifier (unused by the original's forward; kept for configs).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        time_dims: int,
        channels: Optional[int] = None,
        num_layers: int = 6,
        num_heads: int = 8,
        num_levels: int = 1,
        num_points: int = 4,
        ffn_channels: int = 1024,
        pos_num_feats: int = 128,
        pos_temperature: float = 10000,
        pos_normalize: bool = True,
        pos_offset: float = 0.0,
        pos_scale: float = 2 * math.pi,
        pos_eps: float = 1e-6,
        attn_drop: float = 0.0,
        ffn_drop: float = 0.0,
        act_cfg: Optional[dict] = None,
        ignore_index: int = 255,
        align_corners: bool = False,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_levels != 1:
            raise ValueError(f"DDP feeds one feature map to its decoder: num_feature_levels must be 1, got {num_levels}")
        if pos_num_feats * 2 != in_channels:
            raise ValueError(
                f"positional_encoding.num_feats ({pos_num_feats}) must be half of embed_dims ({in_channels})"
            )
        channels = channels or in_channels
        if channels != in_channels:
            raise ValueError(f"decode_head.channels ({channels}) must equal the embed_dims ({in_channels})")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.loss_weight = loss_weight
        self.pos_args = dict(
            num_feats=pos_num_feats,
            temperature=pos_temperature,
            normalize=pos_normalize,
            scale=pos_scale,
            eps=pos_eps,
            offset=pos_offset,
        )
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)  # first, as mmseg's BaseDecodeHead registers it
        self.layers = nn.ModuleList(
            DecoderLayer(in_channels, num_heads, num_levels, num_points, ffn_channels, time_dims, attn_drop, ffn_drop, act_cfg)
            for _ in range(num_layers)
        )
        self._contexts: Dict[Tuple[int, int, str], DecoderContext] = {}
        # under autograd, layers run as one fused function with a lean backward (train_decoder.py);
        # False: the module path, whose autograd graph keeps every intermediate
        self.fused_training = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def context(self, height: int, width: int, device: torch.device) -> DecoderContext:
        """Positional encodings and reference points for an H×W map, cached per size and device."""
        key = (height, width, str(device))
        ctx = self._contexts.get(key)
        if ctx is None:
            pos = sine_positional_encoding(height, width, device=device, **self.pos_args)
            ctx = DecoderContext(
                spatial_shapes=[(height, width)],
                pos=pos.flatten(2).transpose(1, 2),
                ref_points=reference_points([(height, width)], device),
            )
            if len(self._contexts) > 32:
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx

    def time_conditioning(self, time_emb: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """Per-layer (scale, shift), each (B or 1, 1, C), for a time embedding (B or 1, time_dims)."""
        return [layer.time_scale_shift(time_emb) for layer in self.layers]

    def forward_tokens(self, query: Tensor, height: int, width: int, film: List[Tuple[Tensor, Tensor]]) -> Tensor:
        """The layers on a token map (B, H·W, C) with precomputed :meth:`time_conditioning`; returns (B, H·W, C)."""
        ctx = self.context(height, width, query.device)
        if ctx.pos.dtype != query.dtype:  # reference points stay float32 for a bf16/fp16 query (autocast)
            ref_dtype = torch.promote_types(query.dtype, ctx.ref_points.dtype)
            ctx = DecoderContext(ctx.spatial_shapes, ctx.pos.to(query.dtype), ctx.ref_points.to(ref_dtype))
        fuse = self.fused_training and torch.is_grad_enabled()
        for layer, (scale, shift) in zip(self.layers, film):
            if fuse and can_fuse_layer(layer, query):
                query = decoder_layer_train(layer, query, ctx.pos, ctx.ref_points, (height, width), scale, shift)
            else:
                query = layer(query, ctx, scale, shift)
        return query

    def classify_tokens(self, memory: Tensor) -> Tensor:
        """The 1×1 classifier on tokens: (B, Q, C) → (B, Q, classes)."""
        weight = self.conv_seg.weight
        return F.linear(memory, weight.view(weight.shape[0], -1), self.conv_seg.bias)

    def forward(self, x: Tensor, time_emb: Tensor) -> Tensor:
        """x (B, C, H, W) and the time embedding (B or 1, time_dims) → logits (B, classes, H, W)."""
        batch, channels, height, width = x.shape
        memory = self.forward_tokens(x.flatten(2).transpose(1, 2), height, width, self.time_conditioning(time_emb))
        logits = self.classify_tokens(memory)  # the 1×1 conv as one GEMM on the token layout
        return tokens_to_map(logits, height, width)

    def loss(self, logits: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        loss, acc = seg_loss_and_accuracy(
            logits, labels, ignore_index=self.ignore_index, loss_weight=self.loss_weight, align_corners=self.align_corners
        )
        return {"loss_ce": loss, "acc_seg": acc}


class FCNHead(nn.Module):
    """Auxiliary head: ``num_convs`` 3×3 conv-BN-ReLU, dropout, 1×1 classifier."""

    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 1,
        kernel_size: int = 3,
        dilation: int = 1,
        concat_input: bool = False,
        dropout_ratio: float = 0.1,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = dict(type="ReLU"),
        ignore_index: int = 255,
        align_corners: bool = False,
        loss_weight: float = 0.4,
    ) -> None:
        super().__init__()
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"FCNHead with num_convs=0 needs in_channels == channels, got {in_channels}, {channels}")
        pad = (kernel_size // 2) * dilation
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)  # first, as mmseg's BaseDecodeHead registers it
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        convs = [
            ConvNormAct(in_channels if i == 0 else channels, channels, kernel_size, pad, dilation, norm_cfg, act_cfg)
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = (
            ConvNormAct(in_channels + channels, channels, kernel_size, pad, 1, norm_cfg, act_cfg) if concat_input else None
        )
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.loss_weight = loss_weight
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))

    def loss(self, logits: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        loss, acc = seg_loss_and_accuracy(
            logits, labels, ignore_index=self.ignore_index, loss_weight=self.loss_weight, align_corners=self.align_corners
        )
        return {"loss_ce": loss, "acc_seg": acc}
