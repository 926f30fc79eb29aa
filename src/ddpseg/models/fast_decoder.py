"""Inference execution of the time-conditioned deformable decoder, in cache-sized row chunks.

The module path (``DeformableHeadWithTime.forward_tokens``) runs each operation over the whole
(H·W, C) map, so every element-wise step streams hundreds of MB through memory. Here one pass over
row chunks does, per token, everything that is token-wise:

    gather(layer l) → output_proj → +x, LN → FFN (+x) → LN → FiLM(time)
                    → value_proj / offsets / attention logits of layer l+1   (or the classifier)

Only the deformable gather needs all of a layer's values, so values live in two bordered tables
(read layer l, write layer l+1). The gather is a fused kernel where one applies (:mod:`ddpseg.kernels`:
the native CPU kernel, bit-equal, or the Triton kernel on CUDA), else corners + ``embedding_bag``. The
arithmetic per token is the module path's, in the same order; results agree to float rounding (tested).
Single feature level, no dropout: the DDP inference setting.

Under autocast (``--amp bf16|fp16``) the same pass runs the token-wise matrix products (value and output
projections, the FFN) in the autocast dtype, while the buffers — value tables, sampling projections,
residual stream, LayerNorm outputs, logits — stay float32: the sampling offsets and attention logits are
float32 products (their rounding moves sampling locations), the gather runs the float32 kernel, and the
residual sums are float32 as in the module path under autocast.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from .heads import DeformableHeadWithTime
from .ms_deform_attn import single_level_corners

__all__ = ["decode_tokens_chunked", "can_decode_chunked"]

# rows of the feature map per chunk: on a CPU, ~1–2k tokens keep a chunk's FFN hidden (tokens × 4C) in
# cache; a GPU wants wide kernels, the chunks only bound the temporaries there
TARGET_TOKENS_PER_CHUNK = 2048
TARGET_TOKENS_PER_CHUNK_GPU = 1 << 16


def can_decode_chunked(head: DeformableHeadWithTime) -> bool:
    """The chunked path covers the published setting: one level, inference (no grad, or no dropout); with
    or without autocast."""
    attn = head.layers[0].attn
    return attn.num_levels == 1 and not (torch.is_grad_enabled() and head.training)


def _autocast_on(device: torch.device) -> bool:
    return torch.is_autocast_enabled(device.type) if device.type in ("cpu", "cuda") else False


@torch.no_grad()
def decode_tokens_chunked(
    head: DeformableHeadWithTime, feat: Tensor, height: int, width: int, film: List[Tuple[Tensor, Tensor]]
) -> Tensor:
    """(B, H·W, C) tokens → class logits (B, H·W, classes), equal to ``classify_tokens(forward_tokens(...))``."""
    return torch.stack([_decode_one(head, feat[b], height, width, film, b) for b in range(feat.shape[0])])


def _decode_one(
    head: DeformableHeadWithTime, x: Tensor, height: int, width: int, film: List[Tuple[Tensor, Tensor]], b: int
) -> Tensor:
    layers = head.layers
    first = layers[0].attn
    heads, points, channels = first.num_heads, first.num_points, first.embed_dims
    head_dim = channels // heads
    # buffers in the input's dtype; under autocast (or for a reduced-precision input) in float32 at least
    dtype = torch.promote_types(x.dtype, torch.float32) if _autocast_on(x.device) else x.dtype
    x = x.to(dtype)
    ctx = head.context(height, width, x.device)
    pos = ctx.pos[0].to(dtype)  # (Q, C)
    ref = ctx.ref_points[0, :, 0].to(dtype)  # (Q, 2)
    target = TARGET_TOKENS_PER_CHUNK if x.device.type == "cpu" else TARGET_TOKENS_PER_CHUNK_GPU
    rows_per_chunk = max(1, target // width)
    chunks = [(r, min(r + rows_per_chunk, height)) for r in range(0, height, rows_per_chunk)]

    kernel = kernels.gather_kernel(x)
    # the kernels read head-major tables (heads, H + 2, W + 2, D); embedding_bag pixel-major ones
    if kernel is not None:
        table_shape = (heads, height + 2, width + 2, head_dim)
    else:
        table_shape = (height + 2, width + 2, heads, head_dim)
    tables = [x.new_zeros(table_shape) for _ in range(2)]
    sampling = x.new_empty(height * width, heads * points * 3)  # offsets (2 per point) + attention logits
    weights = [_stage_a_weights(layer) for layer in layers]
    out = x.new_empty(height * width, head.num_classes)
    x = x.clone()
    weight_cls = head.conv_seg.weight
    weight_cls = weight_cls.view(weight_cls.shape[0], -1).to(dtype)
    bias_cls = head.conv_seg.bias.to(dtype)

    def stage_a(layer_index: int, r0: int, r1: int, x_c: Tensor) -> None:
        """Values into the next table; sampling offsets and attention logits of layer ``layer_index``."""
        attn = layers[layer_index].attn
        table = tables[layer_index % 2]
        value = F.linear(x_c, attn.value_proj.weight, attn.value_proj.bias).view(r1 - r0, width, heads, head_dim)
        if kernel is not None:
            table[:, r0 + 1 : r1 + 1, 1 : width + 1] = value.permute(2, 0, 1, 3)
        else:
            table[r0 + 1 : r1 + 1, 1 : width + 1] = value
        w_cat, b_cat = weights[layer_index]  # an out= product: float32 also under autocast
        torch.addmm(b_cat, x_c + pos[r0 * width : r1 * width], w_cat.t(), out=sampling[r0 * width : r1 * width])

    for r0, r1 in chunks:
        stage_a(0, r0, r1, x[r0 * width : r1 * width])

    for li, layer in enumerate(layers):
        table = tables[li % 2].view(-1, head_dim)
        scale, shift = film[li]
        scale1 = (scale[min(b, scale.shape[0] - 1), 0] + 1)
        shift = shift[min(b, shift.shape[0] - 1), 0]
        for r0, r1 in chunks:
            t0, t1 = r0 * width, r1 * width
            n = t1 - t0
            samp = sampling[t0:t1]
            if kernel is not None:
                attention = samp[:, heads * points * 2 :].reshape(n, heads, points).softmax(-1)
                core = kernel.msda_forward(samp, attention, ref[t0:t1], table, heads, points, height, width)
            else:
                index, weight = single_level_corners(samp, ref[t0:t1], heads, points, height, width)
                core = F.embedding_bag(index, table, per_sample_weights=weight.view(n * heads, points * 4), mode="sum")
            x_c = x[t0:t1]
            attn = layer.attn
            # a + b == b + a bit for bit, so the in-place adds keep the module path's results
            y = _add_residual(F.linear(core.view(n, channels), attn.output_proj.weight, attn.output_proj.bias), x_c)
            y = F.layer_norm(y, (channels,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
            ffn = layer.ffn
            hidden = _activation_(ffn.act, F.linear(y, ffn.fc1.weight, ffn.fc1.bias))
            y = _add_residual(F.linear(hidden, ffn.fc2.weight, ffn.fc2.bias), y)
            y = F.layer_norm(y, (channels,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
            if li + 1 < len(layers):
                stage_a(li + 1, r0, r1, torch.addcmul(shift, y, scale1, out=x[t0:t1]))
            else:
                torch.addmm(bias_cls, torch.addcmul(shift, y, scale1).to(dtype), weight_cls.t(), out=out[t0:t1])
    return out


def _add_residual(y: Tensor, residual: Tensor) -> Tensor:
    """``y + residual``: in place where the dtypes agree, else (an autocast product) in the wider dtype, as
    the module path's out-of-place sum promotes."""
    return y.add_(residual) if y.dtype == residual.dtype else residual + y


def _activation_(act: torch.nn.Module, x: Tensor) -> Tensor:
    """The FFN activation applied in place where it is GELU (erf form, as nn.GELU()), else out of place."""
    if isinstance(act, torch.nn.GELU) and act.approximate == "none":
        return torch.ops.aten.gelu_(x)
    return act(x)


def _stage_a_weights(layer) -> Tuple[Tensor, Tensor]:
    """Sampling-offset and attention-weight projections fused into one matrix (one GEMM per chunk)."""
    attn = layer.attn
    weight = torch.cat([attn.sampling_offsets.weight, attn.attention_weights.weight], 0)
    bias = torch.cat([attn.sampling_offsets.bias, attn.attention_weights.bias], 0)
    return weight, bias
