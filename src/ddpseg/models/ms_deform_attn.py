"""Multi-scale deformable attention (Deformable DETR), portable PyTorch.

Two implementations of the sampling core, equal up to float rounding (tested):

* ``ms_deform_attn_core`` — the reference: bilinear sampling with ``grid_sample`` (zeros padding,
  align_corners=False), then a weighted sum over points; exactly what mmcv runs on the CPU.
* ``ms_deform_attn_gather`` — the default: every sample is 4 bilinear corners, so the whole attention
  is one weighted sum of value rows per (query, head), which ``F.embedding_bag(mode='sum',
  per_sample_weights=...)`` computes in a single fused pass over a (B·S·heads, head_dim) table that
  is just a view of the projected values — no transposes, no (…, points) intermediate. It is
  differentiable in the values and (through the bilinear weights) in the sampling locations.

``set_sampler`` installs another implementation (e.g. a fused GPU kernel).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ms_deform_attn_core", "ms_deform_attn_gather", "bilinear_corners", "single_level_corners", "single_level_corners_with_backward", "set_sampler", "MultiScaleDeformableAttention", "reference_points"]

SpatialShapes = Sequence[Tuple[int, int]]


def ms_deform_attn_core(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Sample ``value`` at the given locations and mix the samples with the attention weights.

    Args:
        value: (B, sum(H·W), heads, head_dim).
        spatial_shapes: (H, W) of each level, in the order the levels are concatenated in ``value``.
        sampling_locations: (B, Q, heads, levels, points, 2), (x, y) in [0, 1] (outside → zeros).
        attention_weights: (B, Q, heads, levels, points), already softmax-normalised.

    Returns:
        (B, Q, heads·head_dim).
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (B, HW, heads, D) → (B·heads, D, H, W)
        value_l = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, h, w)
        # (B, Q, heads, P, 2) → (B·heads, Q, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B·heads, D, Q, levels·P) weighted by (B·heads, 1, Q, levels·P), summed over the samples
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * head_dim, queries).transpose(1, 2).contiguous()


def bilinear_corners(
    locations: Tensor, attention: Tensor, height: int, width: int
) -> Tuple[Tensor, Tensor]:
    """The 4 bilinear corners of each sampling location, for a map with a one-pixel zero border.

    Args:
        locations: (..., 2) as (x, y) in [0, 1] (outside allowed).
        attention: (...) the attention weight of each location.

    Returns:
        index (..., 4): row-major pixel index into the (height+2)·(width+2) bordered map;
        weight (..., 4): bilinear weight × attention weight. A corner outside the map lands in the zero
        border (clamped), which is how the reference's zeros padding contributes nothing.
    """
    xy0, frac = _source_pixels(locations, height, width)
    return _corners_of(xy0, frac, attention, height, width)


def _source_pixels(locations: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """grid_sample's source coordinates of ``locations`` (x, y in [0, 1]), split into floor and fraction."""
    grid = 2 * locations - 1  # the reference's grid, so the unnormalisation rounds identically
    size = torch.tensor([width, height], dtype=grid.dtype, device=grid.device)
    xy = ((grid + 1) * size - 1) / 2  # grid_sample's source index, align_corners=False
    xy0 = xy.floor()
    return xy0, xy - xy0


def _corners_of(xy0: Tensor, frac: Tensor, attention: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    xy0 = xy0.long() + 1  # +1: the border
    x0 = xy0[..., 0].clamp(0, width + 1)
    x1 = (xy0[..., 0] + 1).clamp(0, width + 1)
    row0 = xy0[..., 1].clamp(0, height + 1) * (width + 2)
    row1 = (xy0[..., 1] + 1).clamp(0, height + 1) * (width + 2)
    fx, fy = frac[..., 0], frac[..., 1]
    a_y0 = attention * (1 - fy)
    a_y1 = attention * fy
    index = torch.stack((row0 + x0, row0 + x1, row1 + x0, row1 + x1), -1)
    weight = torch.stack((a_y0 * (1 - fx), a_y0 * fx, a_y1 * (1 - fx), a_y1 * fx), -1)
    return index, weight


def single_level_corners(
    samp: Tensor, ref: Tensor, heads: int, points: int, height: int, width: int, table_offset: int = 0
) -> Tuple[Tensor, Tensor]:
    """Gather rows and weights for one level, from the raw projections of ``n`` queries.

    Args:
        samp: (n, heads·points·3): sampling offsets (x, y per point) then attention logits, as
            ``sampling_offsets`` and ``attention_weights`` produce them (computed as in ``sampling``).
        ref: (n, 2) reference points (x, y) in [0, 1].
        table_offset: added to every row (e.g. an image's start in a batched table).

    Returns:
        index (n·heads, points·4): rows of a (pixels·heads, head_dim) bordered table (see
        :func:`bilinear_corners`); weight (n, heads, points, 4), differentiable in ``samp``.
    """
    index, weight, _ = _single_level(samp, ref, heads, points, height, width, table_offset)
    return index, weight


def _single_level(
    samp: Tensor, ref: Tensor, heads: int, points: int, height: int, width: int, table_offset: int
) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor]]:
    """:func:`single_level_corners`, plus (attention (n, heads, points), fractions (n, heads, points, 2))."""
    n = samp.shape[0]
    offsets = samp[:, : heads * points * 2].view(n, heads, points, 2)
    attention = samp[:, heads * points * 2 :].reshape(n, heads, points).softmax(-1)
    normalizer = torch.tensor([width, height], dtype=samp.dtype, device=samp.device)
    locations = ref[:, None, None, :] + offsets / normalizer
    xy0, frac = _source_pixels(locations, height, width)
    index, weight = _corners_of(xy0, frac, attention, height, width)
    head = torch.arange(heads, device=samp.device).view(1, heads, 1, 1)
    index = index * heads + head
    if table_offset:
        index = index + table_offset
    return index.view(n * heads, points * 4), weight, (attention, frac)


def single_level_corners_with_backward(
    samp: Tensor, ref: Tensor, heads: int, points: int, height: int, width: int, table_offset: int = 0
) -> Tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """:func:`single_level_corners` without autograd, plus ``backward(grad_weight) -> grad_samp``.

    The backward is the chain rule written out (the bilinear products, then the attention softmax;
    the location's gradient is the fraction's, as d(source pixel)/d(offset) = size / normaliser = 1),
    so no graph is recorded for the ~1M corner weights of a 128×256 map.
    """
    with torch.no_grad():
        index, weight, (attention, frac) = _single_level(samp, ref, heads, points, height, width, table_offset)

    def backward(grad_weight: Tensor) -> Tensor:
        n = samp.shape[0]
        g = grad_weight.view(n, heads, points, 4)
        fx, fy = frac[..., 0], frac[..., 1]
        gx0, gx1 = 1 - fx, fx
        a_y0, a_y1 = attention * (1 - fy), attention * fy
        g_y0 = g[..., 0] * gx0 + g[..., 1] * gx1  # d/d a_y0
        g_y1 = g[..., 2] * gx0 + g[..., 3] * gx1  # d/d a_y1
        g_fx = a_y0 * (g[..., 1] - g[..., 0]) + a_y1 * (g[..., 3] - g[..., 2])
        g_fy = attention * (g_y1 - g_y0)
        g_att = g_y0 * (1 - fy) + g_y1 * fy
        g_logits = attention * (g_att - (attention * g_att).sum(-1, keepdim=True))
        return torch.cat([torch.stack((g_fx, g_fy), -1).view(n, -1), g_logits.view(n, -1)], 1)

    return index, weight, backward


def ms_deform_attn_gather(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Same contract as :func:`ms_deform_attn_core`, computed as one ``embedding_bag`` weighted sum."""
    batch, num_value, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    tables, indices, weights = [], [], []
    start = offset = 0
    for level, (h, w) in enumerate(spatial_shapes):
        level_value = value[:, start : start + h * w].view(batch, h, w, heads, head_dim)
        tables.append(F.pad(level_value, (0, 0, 0, 0, 1, 1, 1, 1)).reshape(batch, -1, heads, head_dim))
        index, weight = bilinear_corners(sampling_locations[:, :, :, level], attention_weights[:, :, :, level], h, w)
        indices.append(index + offset)
        weights.append(weight)
        start += h * w
        offset += (h + 2) * (w + 2)
    table = torch.cat(tables, 1) if levels > 1 else tables[0]
    # row of (b, pixel, head) in the (B·pixels·heads, D) table
    index = torch.stack(indices, 3) * heads + torch.arange(heads, device=value.device).view(1, 1, heads, 1, 1, 1)
    index = index + (torch.arange(batch, device=value.device) * (offset * heads)).view(batch, 1, 1, 1, 1, 1)
    bag = levels * points * 4
    out = F.embedding_bag(
        index.reshape(-1, bag),
        table.reshape(-1, head_dim),
        per_sample_weights=torch.stack(weights, 3).reshape(-1, bag).to(value.dtype),
        mode="sum",
    )
    return out.view(batch, queries, heads * head_dim)


_sampler: Callable[[Tensor, SpatialShapes, Tensor, Tensor], Tensor] = ms_deform_attn_gather


def set_sampler(fn: Optional[Callable[[Tensor, SpatialShapes, Tensor, Tensor], Tensor]]) -> None:
    """Install another implementation of the sampling core (``None`` restores the default gather)."""
    global _sampler
    _sampler = fn or ms_deform_attn_gather


def reference_points(spatial_shapes: SpatialShapes, device: torch.device) -> Tensor:
    """Pixel-centre reference points normalised to [0, 1]: (1, sum(H·W), 1, 2) as (x, y).

    The level axis has size 1 and broadcasts: each query keeps its own point on every level.
    """
    per_level = []
    for h, w in spatial_shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        per_level.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
    return torch.cat(per_level, 1)[:, :, None]


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` learned offsets around its reference point, per head and level.

    Returns the attention output only; the caller adds the residual.

    Args:
        embed_dims: channels of queries and values.
        num_heads: attention heads (embed_dims must be divisible by it).
        num_levels: feature levels the values come from.
        num_points: sampling points per head and level.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Offsets start on a ring around the reference point (head i points at angle 2πi/heads)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def sampling(self, query: Tensor, ref_points: Tensor, spatial_shapes: SpatialShapes) -> Tuple[Tensor, Tensor]:
        """Sampling locations (B, Q, heads, levels, points, 2) and weights (B, Q, heads, levels, points)."""
        batch, queries, _ = query.shape
        shape = (batch, queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(batch, queries, self.num_heads, -1).softmax(-1).view(shape)
        # locations at least in the reference points' precision: under autocast the offsets come from a bf16/fp16
        # product, and a sum in that dtype would round them to the dtype's spacing near 1 (bf16: 1/256 of the map)
        dtype = torch.promote_types(offsets.dtype, ref_points.dtype)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=query.device)
        locations = ref_points[:, :, None, :, None, :] + offsets.to(dtype) / normalizer[None, None, None, :, None, :]
        return locations, weights

    def forward(
        self,
        query: Tensor,
        query_pos: Optional[Tensor],
        ref_points: Tensor,
        spatial_shapes: SpatialShapes,
        value: Optional[Tensor] = None,
    ) -> Tensor:
        """query (B, Q, C) (+ query_pos), values default to the query itself (self-attention)."""
        if value is None:
            value = query
        if query_pos is not None:
            query = query + query_pos
        batch, num_value, _ = value.shape
        expected = sum(h * w for h, w in spatial_shapes)
        if num_value != expected:
            raise ValueError(f"value has {num_value} entries but spatial_shapes {list(spatial_shapes)} need {expected}")
        value = self.value_proj(value).view(batch, num_value, self.num_heads, -1)
        locations, weights = self.sampling(query, ref_points, spatial_shapes)
        return self.output_proj(_sampler(value, spatial_shapes, locations, weights))
