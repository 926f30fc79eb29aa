"""Swin checkpoints → this package's Swin (mmseg names and merging layout): conversion, resizing, loading.

Beside ``swin.py`` like timm's ``checkpoint_filter_fn``: pure functions of a state dict, plus
:func:`load_pretrained`, which also resizes what mmseg resizes (bicubic) before loading.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

import torch.nn.functional as F
from torch import Tensor

from .pretrained import LoadReport, StateDictSource, load_converted, read_source, source_name, unwrap_state_dict

if TYPE_CHECKING:
    from .swin import SwinTransformer

__all__ = ["convert_pretrained", "load_pretrained", "resize_pos_embed", "resize_relative_position_table"]


def resize_pos_embed(pos_embed: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a (1, H·W, C) absolute position embedding from ``src_grid`` to ``dst_grid``."""
    c = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, *src_grid, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(dst_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, c).to(pos_embed.dtype)


def resize_relative_position_table(table: Tensor, length: int) -> Tensor:
    """Bicubic resize of an (L, heads) bias table to (``length``, heads), as mmseg's loader does."""
    src, dst = math.isqrt(table.shape[0]), math.isqrt(length)
    heads = table.shape[1]
    grid = table.permute(1, 0).reshape(1, heads, src, src)
    grid = F.interpolate(grid.float(), size=(dst, dst), mode="bicubic")
    return grid.view(heads, length).permute(1, 0).contiguous().to(table.dtype)


def _merge_reduction_from_official(weight: Tensor) -> Tensor:
    """Official merging concatenates [x(0,0), x(1,0), x(0,1), x(1,1)] slot-major; ours is channel-major
    with slots (0,0), (0,1), (1,0), (1,1). Re-order the input axis (last) of weight or norm vector."""
    *lead, features = weight.shape
    slots = weight.reshape(*lead, 4, features // 4)[..., [0, 2, 1, 3], :]
    return slots.transpose(-1, -2).reshape(*lead, features)


_OFFICIAL_RENAMES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.projection."),
    (re.compile(r"^layers\.(\d+)\."), r"stages.\1."),
    (re.compile(r"\.attn\.(?!w_msa\.)"), ".attn.w_msa."),
    (re.compile(r"\.mlp\.fc1\."), ".ffn.layers.0.0."),
    (re.compile(r"\.mlp\.fc2\."), ".ffn.layers.1."),
)


def convert_pretrained(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename a Swin checkpoint to this module's (= mmseg's) names and merging layout.

    Accepts mmseg format (returned as is, minus non-backbone keys), the official Microsoft release
    (``layers.i.blocks.j.attn.qkv``, ``patch_embed.proj``, ``layers.i.downsample.reduction``) and timm
    (the same names, but recent timm keeps each stage's merging at the start of the *next* stage).
    Patch-merging ``reduction``/``norm`` weights are re-ordered from the official concatenation order
    to the Unfold order, as mmseg's ``swin2mmseg`` does. Dropped: classifier ``head``, the final
    classification ``norm`` (mmseg leaves ``norm3`` at its init) and official ``attn_mask`` buffers.
    """
    sd = unwrap_state_dict(state_dict)
    if not any(k.startswith("layers.") for k in sd):
        return {k: v for k, v in sd.items() if not k.startswith("head.")}
    # recent timm: stage i ≥ 1 owns the merging that precedes it; official: stage i owns the one after
    timm_layout = not any(k.startswith("layers.0.downsample.") for k in sd) and any(
        re.match(r"layers\.\d+\.downsample\.", k) for k in sd
    )
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("head.", "norm.")) or key.endswith("attn_mask"):
            continue
        if timm_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", key)
        if re.search(r"\.downsample\.(reduction|norm)\.", key):
            value = _merge_reduction_from_official(value)
        for pattern, replacement in _OFFICIAL_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def load_pretrained(model: "SwinTransformer", source: StateDictSource, strict: bool = False) -> LoadReport:
    """Load ImageNet (or any Swin) weights from a path or a state dict into ``model``.

    After :func:`convert_pretrained`, relative-position bias tables of another window size and an
    absolute position embedding of another grid are resized bicubically (as mmseg), and the constant
    ``relative_position_index`` buffers are taken from the model. Returns a :class:`LoadReport`;
    with ``strict=True`` a partial match raises ``ValueError``.
    """
    sd = convert_pretrained(read_source(source))
    own = model.state_dict()
    resized = []
    for key in list(sd):
        if key not in own:
            continue
        if key.endswith("relative_position_index"):
            sd[key] = own[key]
        elif key.endswith("relative_position_bias_table") and sd[key].shape != own[key].shape:
            if sd[key].shape[1] == own[key].shape[1]:  # heads differ: leave it to the mismatch report
                sd[key] = resize_relative_position_table(sd[key], own[key].shape[0])
                resized.append(key)
        elif key == "absolute_pos_embed" and sd[key].shape != own[key].shape:
            value = sd[key]
            if value.dim() == 4:  # (1, C, H, W) layout of some old exports
                value = value.flatten(2).transpose(1, 2)
            side = math.isqrt(value.shape[1])
            if side * side == value.shape[1] and value.shape[2] == own[key].shape[2]:
                sd[key] = resize_pos_embed(value, (side, side), model.pos_embed_grid)
                resized.append(key)
    return load_converted(model, sd, strict=strict, source=source_name(source), resized=resized)
