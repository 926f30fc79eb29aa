"""Training execution of one decoder layer: a fused autograd function with a hand-written backward.

Under autograd the module path (``DecoderLayer.forward``) keeps every intermediate of a layer alive
until the backward pass: ~600 MB per layer for a 512×1024 crop (the FFN hidden twice, the deformable
gather's int64 index and weights, a copy of the input per projection, ...), 3.6 GB for the six layers.
Its backward also goes through ``embedding_bag``'s generic backward, which sorts every index.

``decoder_layer_train`` computes the same function in row chunks (as the inference path does) and
keeps only what the backward cannot cheaply rebuild:

    table     — the bordered value map the gather reads (B, H+2, W+2, heads, D; head-major
                (B, heads, H+2, W+2, D) for the kernels)
    samp      — sampling offsets and attention logits (B, Q, heads·points·3)
    attention — with a kernel: the logits' softmax (B, Q, heads, points)
    core      — the gathered attention output, the input of output_proj (B, Q, C)
    r1, f     — the inputs of the two LayerNorms (B, Q, C), with their means and reciprocal stds
    pre       — the FFN pre-activation fc1(y1) (B, Q, ffn)

(the layer input is the previous layer's output, saved once): ≈ 275 MB per layer instead of ≈ 600.
Keeping ``pre`` (128 MB at 512×1024) rather than recomputing it saves one 17-GFLOP GEMM per layer,
keeping ``core`` (32 MB) a second gather. The backward walks the chunks for the token-wise part,
recomputing each LayerNorm output and GELU(pre); then, per image, a fused kernel (:mod:`ddpseg.kernels`:
the native CPU kernel, or the Triton kernel on CUDA) gives the value-table and offset/attention-logit
gradients in one pass. Without one (no compiler or Triton, ``DDPSEG_NATIVE=0`` / ``DDPSEG_TRITON=0``, or
float64 on CUDA) the backward rebuilds the bilinear corners of the whole map,
gets the value and corner-weight gradients from two sparse products (``_gather_backward``) and the
offset/attention-logit gradients from the corner weights' chain rule written out
(``single_level_corners_with_backward``). Gradients equal the module path's up to float rounding
(tested in float64, with and without the kernel). Used for gradient passes of the
published setting: one feature level, GELU FFN, no active dropout, no autocast; anything else runs
the module path. Double backward is not supported.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .. import kernels
from .ms_deform_attn import single_level_corners, single_level_corners_with_backward

__all__ = ["can_fuse_layer", "decoder_layer_train"]

# tokens per chunk: on a CPU, keeps a chunk's FFN hidden and its gathered corner rows a few MB; on a GPU,
# chunks only bound the temporaries, and large ones keep the kernels wide
TOKENS_PER_CHUNK = 2048
TOKENS_PER_CHUNK_GPU = 1 << 16


def can_fuse_layer(layer: nn.Module, x: Tensor) -> bool:
    """Whether the fused function computes exactly what ``layer`` does for ``x`` under autograd."""
    attn = layer.attn
    act = layer.ffn.act
    dropout_active = layer.training and (layer.attn_drop.p > 0 or layer.ffn.drop.p > 0)
    autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cpu", "cuda") else False
    return (
        attn.num_levels == 1
        and isinstance(act, nn.GELU)
        and act.approximate == "none"
        and not dropout_active
        and not autocast
        and x.dtype in (torch.float32, torch.float64)
    )


def decoder_layer_train(
    layer: nn.Module, x: Tensor, pos: Tensor, ref: Tensor, shape: Tuple[int, int], scale: Tensor, shift: Tensor
) -> Tensor:
    """``layer(x, ctx, scale, shift)`` for tokens x (B, H·W, C), pos (1, H·W, C), ref (1, H·W, 1, 2)."""
    attn, ffn = layer.attn, layer.ffn
    params = (
        attn.value_proj.weight, attn.value_proj.bias,
        attn.sampling_offsets.weight, attn.sampling_offsets.bias,
        attn.attention_weights.weight, attn.attention_weights.bias,
        attn.output_proj.weight, attn.output_proj.bias,
        layer.norm1.weight, layer.norm1.bias,
        ffn.fc1.weight, ffn.fc1.bias,
        ffn.fc2.weight, ffn.fc2.bias,
        layer.norm2.weight, layer.norm2.bias,
    )  # fmt: skip
    spec = _Spec(shape[0], shape[1], attn.num_heads, attn.num_points, layer.norm1.eps, layer.norm2.eps,
                 kernel=kernels.gather_kernel(x),
                 tokens_per_chunk=TOKENS_PER_CHUNK if x.device.type == "cpu" else TOKENS_PER_CHUNK_GPU)
    return _FusedLayer.apply(spec, x.contiguous(), pos[0].to(x.dtype), ref[0, :, 0].to(x.dtype), scale, shift, *params)


class _Spec:
    """The layer's static sizes (kept out of autograd's tensor arguments)."""

    def __init__(self, height: int, width: int, heads: int, points: int, eps1: float, eps2: float, kernel,
                 tokens_per_chunk: int) -> None:
        self.height, self.width, self.heads, self.points = height, width, heads, points
        self.eps1, self.eps2 = eps1, eps2
        self.kernel = kernel  # a fused gather kernel (kernels.gather_kernel) or None; its value table is head-major
        self.tokens_per_chunk = tokens_per_chunk

    def chunks(self) -> List[Tuple[int, int]]:
        rows = max(1, self.tokens_per_chunk // self.width)
        return [(r * self.width, min(r + rows, self.height) * self.width) for r in range(0, self.height, rows)]


def _attention_output(
    spec: _Spec, samp: Tensor, attention: Optional[Tensor], ref: Tensor, flat_table: Tensor, batch_index: int, out: Tensor
) -> Tensor:
    """The deformable gather of n queries into ``out`` (n, heads·head_dim), rows offset to image
    ``batch_index`` of the batched table: the fused kernel (reading ``attention``, the softmax of the
    logits) where there is one, else corners + ``embedding_bag`` (the native kernel is bit-equal to it)."""
    h, w = spec.height, spec.width
    n = samp.shape[0]
    offset = batch_index * ((h + 2) * (w + 2) * spec.heads)
    if spec.kernel is not None:
        return spec.kernel.msda_forward(samp, attention, ref, flat_table, spec.heads, spec.points, h, w, offset, out=out)
    index, weight = single_level_corners(samp, ref, spec.heads, spec.points, h, w, offset)
    core = F.embedding_bag(index, flat_table, per_sample_weights=weight.view(n * spec.heads, -1), mode="sum")
    return out.copy_(core.view(n, -1))


def _softmax_attention(spec: _Spec, samp: Tensor) -> Tensor:
    """The attention weights (..., heads, points) from the logits that follow the offsets in ``samp`` (..., 3·heads·points)."""
    hp = spec.heads * spec.points
    return samp[..., 2 * hp :].reshape(*samp.shape[:-1], spec.heads, spec.points).softmax(-1)


class _FusedLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, x: Tensor, pos: Tensor, ref: Tensor, scale: Tensor, shift: Tensor, *params: Tensor):
        (wv, bv, woff, boff, watt, batt, wo, bo, g1, b1, w1, bf1, w2, bf2, g2, b2) = params
        batch, tokens, channels = x.shape
        h, w, heads = spec.height, spec.width, spec.heads
        head_dim = channels // heads
        value = F.linear(x, wv, bv).view(batch, h, w, heads, head_dim)
        if spec.kernel is not None:
            table = x.new_zeros(batch, heads, h + 2, w + 2, head_dim)
            table[:, :, 1 : h + 1, 1 : w + 1] = value.permute(0, 3, 1, 2, 4)
        else:
            table = x.new_zeros(batch, h + 2, w + 2, heads, head_dim)
            table[:, 1 : h + 1, 1 : w + 1] = value
        del value
        flat_table = table.view(-1, head_dim)
        query = x + pos
        samp = F.linear(query, torch.cat([woff, watt]), torch.cat([boff, batt]))  # as the inference path does
        del query
        # the attention weights (softmax of the logits), for the kernel's gather and its backward
        attention = _softmax_attention(spec, samp) if spec.kernel is not None else samp.new_empty(0)
        core_all = torch.empty_like(x)  # the gathered attention output, the input of output_proj
        r1, f, out = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
        pre = x.new_empty(batch, tokens, w1.shape[0])
        stats = x.new_empty(4, batch, tokens)  # mean1, rstd1, mean2, rstd2
        scale1 = scale + 1
        for b in range(batch):
            sb = min(b, scale.shape[0] - 1)
            for t0, t1 in spec.chunks():
                att = attention[b, t0:t1] if spec.kernel is not None else None
                core = _attention_output(spec, samp[b, t0:t1], att, ref[t0:t1], flat_table, b, core_all[b, t0:t1])
                r = torch.add(x[b, t0:t1], F.linear(core, wo, bo), out=r1[b, t0:t1])
                y, stats[0, b, t0:t1], stats[1, b, t0:t1] = _layer_norm(r, g1, b1, spec.eps1)
                hidden = F.gelu(torch.addmm(bf1, y, w1.t(), out=pre[b, t0:t1]))
                r = torch.add(y, F.linear(hidden, w2, bf2), out=f[b, t0:t1])
                y, stats[2, b, t0:t1], stats[3, b, t0:t1] = _layer_norm(r, g2, b2, spec.eps2)
                torch.addcmul(shift[sb, 0], y, scale1[sb, 0], out=out[b, t0:t1])
        ctx.spec = spec
        ctx.save_for_backward(x, pos, ref, scale1, table, samp, attention, core_all, r1, pre, f, stats, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        spec: _Spec = ctx.spec
        x, pos, ref, scale1, table, samp, attention_all, core_all, r1, pre_all, f, stats, *params = ctx.saved_tensors
        (wv, bv, woff, boff, watt, batt, wo, bo, g1, b1, w1, bf1, w2, bf2, g2, b2) = params
        grad_out = grad_out.contiguous()
        batch, tokens, channels = x.shape
        heads, head_dim = spec.heads, channels // spec.heads
        h, w = spec.height, spec.width
        grads = {name: torch.zeros_like(p) for name, p in zip(_PARAM_NAMES, params)}
        g_scale = torch.zeros_like(scale1)
        g_shift = torch.zeros_like(scale1)
        g_x = torch.empty_like(x)
        g_samp = torch.empty_like(samp)
        g_value = torch.empty_like(x)  # gradient of value_proj(x): the interior of the table's gradient
        g_core = x.new_empty(tokens, channels)
        kernel = spec.kernel
        for b in range(batch):
            sb = min(b, scale1.shape[0] - 1)
            flat_table = table[b].view(-1, head_dim)
            core = core_all[b]  # the input of output_proj
            if kernel is None:
                index, weight, corners_backward = single_level_corners_with_backward(
                    samp[b], ref, spec.heads, spec.points, h, w
                )
            for t0, t1 in spec.chunks():
                g = grad_out[b, t0:t1]
                # FiLM: out = y2·(scale + 1) + shift
                y2 = F.layer_norm(f[b, t0:t1], (channels,), g2, b2, spec.eps2)
                g_scale[sb, 0] += (g * y2).sum(0)
                g_shift[sb, 0] += g.sum(0)
                g_y = g * scale1[sb, 0]
                g_f = _layer_norm_backward(g_y, f[b, t0:t1], stats[2, b, t0:t1], stats[3, b, t0:t1], g2, b2, grads, "g2", "b2")
                # FFN with residual: f = y1 + fc2(gelu(fc1(y1)))
                y1 = F.layer_norm(r1[b, t0:t1], (channels,), g1, b1, spec.eps1)
                pre = pre_all[b, t0:t1]
                grads["w2"].addmm_(g_f.t(), F.gelu(pre))
                grads["bf2"] += g_f.sum(0)
                g_pre = torch.ops.aten.gelu_backward(g_f.mm(w2), pre)
                grads["w1"].addmm_(g_pre.t(), y1)
                grads["bf1"] += g_pre.sum(0)
                g_y1 = torch.addmm(g_f, g_pre, w1)
                g_r1 = _layer_norm_backward(g_y1, r1[b, t0:t1], stats[0, b, t0:t1], stats[1, b, t0:t1], g1, b1, grads, "g1", "b1")
                # r1 = x + output_proj(core)
                g_x[b, t0:t1] = g_r1
                grads["wo"].addmm_(g_r1.t(), core[t0:t1])
                grads["bo"] += g_r1.sum(0)
                torch.mm(g_r1, wo, out=g_core[t0:t1])
            del core
            # core = Σ_k weight_k · table[index_k] per token and head
            if kernel is not None:
                g_rows, g_samp[b] = kernel.msda_backward(
                    samp[b], attention_all[b], ref, flat_table, g_core, heads, spec.points, h, w
                )
            else:
                g_weight, g_rows = _gather_backward(flat_table, index, weight, g_core)
                g_samp[b] = corners_backward(g_weight)
            if kernel is not None:  # head-major rows
                interior = g_rows.view(heads, h + 2, w + 2, head_dim)[:, 1 : h + 1, 1 : w + 1].permute(1, 2, 0, 3)
            else:
                interior = g_rows.view(h + 2, w + 2, heads, head_dim)[1 : h + 1, 1 : w + 1]
            g_value[b].view(h, w, heads, head_dim).copy_(interior)
        # values: table interior = value_proj(x)
        g_value = g_value.view(-1, channels)
        x2 = x.view(-1, channels)
        grads["wv"] = g_value.t().mm(x2)
        grads["bv"] = g_value.sum(0)
        g_x = g_x.view(-1, channels).addmm_(g_value, wv)
        # sampling offsets and attention logits from x + pos
        q = (x + pos).view(-1, channels)
        split = woff.shape[0]
        g_samp = g_samp.view(-1, g_samp.shape[-1])
        # both projections at once: one (96 × C) weight gradient and one K=96 input-gradient GEMM, not four thin ones
        g_w = g_samp.t().mm(q)
        g_b = g_samp.sum(0)
        grads["woff"], grads["watt"] = g_w[:split], g_w[split:]
        grads["boff"], grads["batt"] = g_b[:split], g_b[split:]
        g_x.addmm_(g_samp, torch.cat([woff, watt]))
        param_grads = [grads[name] if p.requires_grad else None for name, p in zip(_PARAM_NAMES, params)]
        return (None, g_x.view_as(x), None, None, g_scale, g_shift, *param_grads)


def _gather_backward(
    table: Tensor, index: Tensor, weight: Tensor, grad: Tensor, sparse: Optional[bool] = None
) -> Tuple[Tensor, Tensor]:
    """Gradients of ``out[i] = Σ_k weight[i, k] · table[index[i, k]]`` (an ``embedding_bag`` sum).

    Returns (grad_weight (bags, k), grad_table (rows, D)). On the CPU (``sparse`` defaults to that):
    with A the sparse (bags × rows) matrix of the weights, out = A·table, so the weight gradient is
    ``grad·tableᵀ`` sampled at A's pattern (``sampled_addmm``) and the table gradient is Aᵀ·grad, a CSR
    product once the entries are grouped by row (one int32 sort); neither materialises the
    (bags × k × D) gathered rows. Elsewhere: gathered rows and ``index_add_`` in bag chunks (atomic
    adds are cheap on a GPU).
    """
    if sparse is None:
        sparse = index.device.type == "cpu"
    if not sparse:
        return _gather_backward_dense(table, index, weight, grad)
    bags, k = index.shape
    rows, dim = table.shape
    flat = index.reshape(-1)
    grad = grad.reshape(bags, dim)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        crow = torch.arange(0, bags * k + 1, k, device=index.device)
        pattern = torch.sparse_csr_tensor(crow, flat, weight.new_zeros(bags * k), size=(bags, rows))
        grad_weight = torch.sparse.sampled_addmm(pattern, grad, table.t(), beta=0).values().view(bags, k)
        keys = flat.to(torch.int32) if rows < 2**31 else flat
        keys, order = keys.sort()
        per_row = torch.bincount(keys, minlength=rows)
        crow_t = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])
        transposed = torch.sparse_csr_tensor(crow_t, order // k, weight.reshape(-1)[order], size=(rows, bags))
        grad_table = transposed @ grad
    return grad_weight, grad_table


def _gather_backward_dense(table: Tensor, index: Tensor, weight: Tensor, grad: Tensor) -> Tuple[Tensor, Tensor]:
    bags, k = index.shape
    dim = table.shape[1]
    grad = grad.reshape(bags, dim)
    weight = weight.reshape(bags, k)
    grad_weight = torch.empty_like(weight)
    grad_table = torch.zeros_like(table)
    step = max(1, (1 << 22) // (k * dim))  # ~16 MB of gathered rows at a time
    for i0 in range(0, bags, step):
        i1 = min(i0 + step, bags)
        flat = index[i0:i1].reshape(-1)
        g = grad[i0:i1, :, None]
        grad_weight[i0:i1] = torch.bmm(table.index_select(0, flat).view(i1 - i0, k, dim), g)[..., 0]
        grad_table.index_add_(0, flat, (weight[i0:i1, :, None] * g.transpose(1, 2)).reshape(-1, dim))
    return grad_weight, grad_table


_PARAM_NAMES = ("wv", "bv", "woff", "boff", "watt", "batt", "wo", "bo", "g1", "b1", "w1", "bf1", "w2", "bf2", "g2", "b2")


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the last axis as ``F.layer_norm`` computes it; returns (out, mean, rstd)."""
    out, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return out, mean.view(-1), rstd.view(-1)


def _layer_norm_backward(
    grad: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor,
    bias: Tensor,
    grads: dict,
    w_name: str,
    b_name: str,
) -> Tensor:
    """Input gradient of LayerNorm; accumulates the weight and bias gradients into ``grads``."""
    g_in, g_w, g_b = torch.ops.aten.native_layer_norm_backward(
        grad, x, (x.shape[-1],), mean[:, None], rstd[:, None], weight, bias, (True, True, True)
    )
    grads[w_name] += g_w
    grads[b_name] += g_b
    return g_in
