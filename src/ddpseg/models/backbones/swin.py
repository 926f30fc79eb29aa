"""Swin Transformer backbone with the numerics and state-dict names of mmseg 0.x (DDP's copy).

Behaviour kept as mmseg has it, on purpose:

* patch embedding and patch merging pad the bottom/right ("corner") to a multiple of their stride,
  so odd sizes round up (120×200 → 30×50, 15×25, 8×13, 4×7);
* each block pads its *normalised* tokens with zeros to a window multiple; padded tokens take part
  in attention (unmasked) and are cropped afterwards; the shifted-window mask is built on the padded
  size and uses -100 (not -inf) between regions;
* patch merging orders the 2×2 neighbourhood channel-major (``nn.Unfold`` order), unlike the official
  release; :func:`convert_pretrained` re-orders official/timm weights like mmseg's ``swin2mmseg``;
* from-scratch init (:meth:`SwinTransformer.init_weights`) leaves the relative-position tables at zero.

Reading order: helpers → attention → block → embedding/merging → stage → model. Checkpoint
conversion and loading live in ``swin_checkpoint`` and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import Tensor, nn

from .layers import DropPath, check_gelu, layer_norm_settings
from .pretrained import LoadReport
from .swin_checkpoint import convert_pretrained, load_pretrained, resize_pos_embed

__all__ = [
    "SwinTransformer",
    "SwinBlock",
    "WindowMSA",
    "PatchEmbed",
    "PatchMerging",
    "relative_position_index",
    "shifted_window_mask",
    "convert_pretrained",
    "load_pretrained",
]


def relative_position_index(window_size: int) -> Tensor:
    """(w², w²) index into the (2w-1)² bias table: row-major offset of (dy + w-1, dx + w-1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, w²)
    delta = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)
    return delta[0] * (2 * window_size - 1) + delta[1]


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) → (B·nW, w·w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, w·w, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window_size: int, shift: int, device=None) -> Tensor:
    """(nW, w², w²) additive mask for shifted windows on a padded (height, width) map.

    After rolling by ``-shift``, the last window row/column mixes tokens that were far apart; tokens
    get a region label per axis (main part / last window before the wrap / wrapped strip) and pairs
    with different labels get -100.
    """
    labels = torch.zeros((1, height, width, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    region = 0
    for rows in bounds:
        for cols in bounds:
            labels[:, rows, cols, :] = region
            region += 1
    windows = window_partition(labels, window_size).squeeze(-1)  # (nW, w²)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _pad_to_multiple(size: int, multiple: int) -> int:
    return (multiple - size % multiple) % multiple


class WindowMSA(nn.Module):
    """Multi-head self-attention inside (w×w) windows with a learned relative position bias."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # persistent, as in mmseg and the official release, so checkpoints carry it
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x: (B·nW, N, C); mask: (nW, N, N) with values in {0, -100} or None."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # explicit scale-then-matmul (not scaled_dot_product_attention) to keep mmseg's rounding
        attn = (q * self.scale) @ k.transpose(-2, -1)
        area = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(area, area, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(b // num_windows, num_windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class ShiftWindowMSA(nn.Module):
    """Pad to window multiples, optionally roll by ``shift_size``, window attention, undo, crop."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, qk_scale, attn_drop_rate, proj_drop_rate)
        self.drop = DropPath(drop_path_rate)

    def forward(self, query: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        b, length, c = query.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"ShiftWindowMSA: {length} tokens do not form a {h}×{w} map")
        ws, shift = self.window_size, self.shift_size
        x = F.pad(query.view(b, h, w, c), (0, 0, 0, _pad_to_multiple(w, ws), 0, _pad_to_multiple(h, ws)))
        h_pad, w_pad = x.shape[1], x.shape[2]
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(h_pad, w_pad, ws, shift, device=x.device).to(x.dtype)
        x = window_reverse(self.w_msa(window_partition(x, ws), mask=mask), ws, h_pad, w_pad)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        return self.drop(x)


class FFN(nn.Module):
    """mmcv's two-layer FFN (Linear → GELU → Dropout → Linear → Dropout) with drop-path residual."""

    def __init__(self, embed_dims: int, hidden_dims: int, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden_dims), nn.GELU(), nn.Dropout(drop_rate)),
            nn.Linear(hidden_dims, embed_dims),
            nn.Dropout(drop_rate),
        )
        self.dropout_layer = DropPath(drop_path_rate)

    def forward(self, x: Tensor, identity: Tensor) -> Tensor:
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and FFN, each with a residual; odd blocks shift by w // 2."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        feedforward_channels: int,
        window_size: int = 7,
        shift: bool = False,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = ShiftWindowMSA(
            embed_dims,
            num_heads,
            window_size,
            shift_size=window_size // 2 if shift else 0,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
        self.norm2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.ffn = FFN(embed_dims, feedforward_channels, drop_rate, drop_path_rate)

    def _inner(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint.checkpoint(self._inner, x, hw_shape, use_reentrant=False)
        return self._inner(x, hw_shape)


class PatchEmbed(nn.Module):
    """Corner-pad to a multiple of the stride, non-overlapping conv, flatten to tokens, optional LN."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, norm_eps: Optional[float]) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims, eps=norm_eps) if norm_eps is not None else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, _pad_to_multiple(w, self.patch_size), 0, _pad_to_multiple(h, self.patch_size)))
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        return (self.norm(x) if self.norm is not None else x), hw_shape


class PatchMerging(nn.Module):
    """Corner-pad to even size, gather each 2×2 neighbourhood channel-major (Unfold order), LN, Linear."""

    def __init__(self, in_channels: int, out_channels: int, norm_eps: Optional[float]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(4 * in_channels, eps=norm_eps) if norm_eps is not None else None
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        b, length, c = x.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"PatchMerging: {length} tokens do not form a {h}×{w} map")
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # feature index = c·4 + dy·2 + dx, exactly what nn.Unfold(kernel 2, stride 2) produces
        x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 5, 2, 4).reshape(b, h2 * w2, 4 * c)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), (h2, w2)


class SwinBlockSequence(nn.Module):
    """One stage: ``depth`` blocks (alternating plain/shifted windows), then optional patch merging."""

    def __init__(self, blocks: list[SwinBlock], downsample: Optional[PatchMerging]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor, hw_shape: tuple[int, int]):
        """Returns (next-stage tokens, their shape, this stage's output tokens, their shape)."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        x_down, down_shape = self.downsample(x, hw_shape)
        return x_down, down_shape, x, hw_shape


class SwinTransformer(nn.Module):
    """Swin Transformer (`arXiv:2103.14030 <https://arxiv.org/abs/2103.14030>`_) as built by mmseg 0.x.

    Args:
        pretrain_img_size: image size of pretraining; sizes ``absolute_pos_embed`` only.
        in_channels: image channels.
        embed_dims: channels of stage 0; doubles at each stage.
        patch_size: patch-embedding kernel and stride (must equal ``strides[0]``).
        window_size: attention window side.
        mlp_ratio: FFN hidden size / channels.
        depths, num_heads: blocks and attention heads per stage.
        strides: patch embedding then patch merging strides; merging must be 2.
        out_indices: stages whose (normed) output is returned.
        qkv_bias, qk_scale: q/k/v bias; override of ``head_dim ** -0.5``.
        patch_norm: LayerNorm after patch embedding and inside patch merging.
        drop_rate, attn_drop_rate: dropout after projections / on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks.
        use_abs_pos_embed: add a learned absolute position embedding after patch embedding.
        act_cfg: only GELU. norm_cfg: LayerNorm config (``eps``, ``requires_grad``).
        with_cp: gradient checkpointing per block while training.
        pretrained: optional checkpoint path that :meth:`init_weights` loads (mmseg's deprecated arg).
        frozen_stages: freeze patch embedding (≥0) and the first ``frozen_stages`` stages with their norms.

    Attributes:
        num_features: channels of every stage. feature_channels: channels of each returned map.
    """

    def __init__(
        self,
        pretrain_img_size: Union[int, Sequence[int]] = 224,
        in_channels: int = 3,
        embed_dims: int = 96,
        patch_size: int = 4,
        window_size: int = 7,
        mlp_ratio: float = 4,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        strides: Sequence[int] = (4, 2, 2, 2),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        patch_norm: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_abs_pos_embed: bool = False,
        act_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        with_cp: bool = False,
        pretrained: Optional[str] = None,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        size = (pretrain_img_size,) * 2 if isinstance(pretrain_img_size, int) else tuple(pretrain_img_size)
        size = size * 2 if len(size) == 1 else size
        if len(size) != 2:
            raise ValueError(f"SwinTransformer: pretrain_img_size must be an int or 1-2 ints, got {pretrain_img_size}")
        if strides[0] != patch_size:
            raise ValueError(f"SwinTransformer: strides[0]={strides[0]} must equal patch_size={patch_size}")
        if any(s != 2 for s in strides[1:]):
            raise ValueError(f"SwinTransformer: patch-merging strides must be 2, got {tuple(strides[1:])}")
        if not len(depths) == len(num_heads) == len(strides):
            raise ValueError(f"SwinTransformer: depths {depths}, num_heads {num_heads}, strides {strides} differ in length")
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f"SwinTransformer: pretrained must be a path or None, got {type(pretrained).__name__}")
        check_gelu(act_cfg, "SwinTransformer")
        eps, norm_grad = layer_norm_settings(norm_cfg, 1e-5, ("LN",), "SwinTransformer")
        num_stages = len(depths)
        self.out_indices = list(out_indices)
        if any(not 0 <= i < num_stages for i in self.out_indices):
            raise ValueError(f"SwinTransformer: out_indices {self.out_indices} out of range for {num_stages} stages")
        self.pretrained = pretrained
        self.frozen_stages = frozen_stages
        self.use_abs_pos_embed = use_abs_pos_embed
        self.pos_embed_grid = (size[0] // patch_size, size[1] // patch_size)

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, eps if patch_norm else None)
        if use_abs_pos_embed:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.pos_embed_grid), embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.num_features = [int(embed_dims * 2**i) for i in range(num_stages)]
        self.stages = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dims = self.num_features[i]
            first = sum(depths[:i])
            blocks = [
                SwinBlock(
                    dims,
                    heads,
                    int(mlp_ratio * dims),
                    window_size,
                    shift=j % 2 == 1,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate,
                    drop_path_rate=rates[first + j],
                    norm_eps=eps,
                    with_cp=with_cp,
                )
                for j in range(depth)
            ]
            last = i == num_stages - 1
            merge = None if last else PatchMerging(dims, 2 * dims, eps if patch_norm else None)
            self.stages.append(SwinBlockSequence(blocks, merge))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i], eps=eps))
        self.feature_channels = [self.num_features[i] for i in self.out_indices]
        if not norm_grad:
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(False)
        self._freeze_stages()

    def init_weights(self) -> Optional[LoadReport]:
        """mmseg's from-scratch init, or loading ``self.pretrained`` when it was given.

        From scratch: truncated normal (std 0.02) Linear weights and absolute position embedding,
        zero Linear biases, LayerNorm 1/0; the patch-embedding conv keeps PyTorch's default and the
        relative-position tables stay zero (mmseg never calls their own init).
        """
        if self.pretrained is not None:
            return load_pretrained(self, self.pretrained)
        if self.use_abs_pos_embed:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        return None

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) image → one (N, C_i, H_i, W_i) map per ``out_indices`` entry."""
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self._abs_pos_embed_for(hw_shape)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape, out, out_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, *out_shape, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        return outs

    def _abs_pos_embed_for(self, hw_shape: tuple[int, int]) -> Tensor:
        if tuple(hw_shape) == self.pos_embed_grid:
            return self.absolute_pos_embed
        # mmseg would fail to broadcast here; resizing like its checkpoint loader is the useful choice
        return resize_pos_embed(self.absolute_pos_embed, self.pos_embed_grid, hw_shape)

    def train(self, mode: bool = True) -> "SwinTransformer":
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            self.patch_embed.requires_grad_(False)
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
            self.drop_after_pos.eval()
        for i in range(self.frozen_stages):
            if i in self.out_indices:
                getattr(self, f"norm{i}").eval().requires_grad_(False)
            self.stages[i].eval().requires_grad_(False)
