"""Optional Triton kernels of the single-level deformable gather, for CUDA tensors.

The same contract as :mod:`ddpseg.native` (head-major bordered value tables, raw sampling
projections, the attention softmax computed by PyTorch), so the fused training layer and the
chunked inference decoder call either one:

* forward: one program per (block of queries, head) computes every sample's four bilinear corners
  with the portable path's operations (IEEE division, no contracted multiply-adds) and sums the
  weighted corner rows with fused multiply-adds in ``embedding_bag``'s order (bit-equal to it on the
  CPU, in Triton's interpreter);
* backward: the same programs gather the corner rows again, take their dot products with the output
  gradient, scatter the weighted gradient into the value table (atomic adds) and apply the chain rule
  to the offsets and, through the softmax, to the attention logits.

The kernels are verified against the portable path in tests through Triton's interpreter
(``TRITON_INTERPRET=1`` runs them on CPU tensors). On a GPU the first use also runs a small self-check
against the portable path; a failure there (or a Triton that cannot compile for the device) warns once
and the portable path runs. ``DDPSEG_TRITON=0`` switches the kernels off.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import check_gather_args

try:  # Triton ships with CUDA builds of PyTorch; it is optional everywhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["triton_available", "triton_enabled", "usable", "msda_forward", "msda_backward", "self_check"]

# queries per program on a GPU: the sm_90 cubins then use 80 (forward) and 136 (backward) registers, no spills
BLOCK_QUERIES = 16
BLOCK_QUERIES_INTERPRETED = 1024  # in the interpreter, each program costs Python overhead: fewer, wider ones
_lock = threading.Lock()
_checked: dict = {}  # device index → passed the self-check


def triton_available() -> bool:
    """Whether Triton can be imported."""
    return triton is not None


def triton_enabled() -> bool:
    """Whether the kernels may be used (``DDPSEG_TRITON=0`` switches them off)."""
    return os.environ.get("DDPSEG_TRITON", "1").strip().lower() not in ("0", "false", "no", "off")


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when this module was
    imported): they then take CPU tensors, executed with NumPy."""
    return triton is not None and type(_msda_forward_kernel).__name__ == "InterpretedFunction"


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels apply: float32 CUDA tensors on one device, Triton present, and the device
    passed :func:`self_check` (run once per device, on first use). Not for gradients under
    ``torch.use_deterministic_algorithms`` (``--deterministic``): the backward's atomic adds sum in no fixed
    order, so the portable path (deterministic ``index_add_`` in that mode) runs instead."""
    if triton is None or not triton_enabled():
        return False
    if torch.is_grad_enabled() and torch.are_deterministic_algorithms_enabled():
        return False
    first = tensors[0]
    if first.device.type != "cuda" or first.dtype != torch.float32:
        return False
    if any(t.device != first.device or t.dtype != first.dtype for t in tensors):
        return False
    return self_check(first.device)


if triton is not None:

    @triton.jit
    def _corners(samp_ptr, att_ptr, ref_ptr, q, qmask, point, dmask, head, samp_stride, height, width,
                 HEADS: tl.constexpr, POINTS: tl.constexpr):
        """Point ``point`` of every query (tensors of shape (BLOCK, 1)): the rows of its 4 corners within
        one head's bordered plane, the fractions, the attention weight and its two y-interpolated parts,
        and the masks of valid (query, point) and (query, point, channel).

        The arithmetic is the portable path's (``_single_level``): location = ref + offset / size,
        grid = 2·location − 1, source = ((grid + 1)·size − 1) / 2, corner = floor(source) + 1 (the
        border) clamped to the bordered map.
        """
        p = tl.arange(0, 1) + point
        m = qmask[:, None] & (p < POINTS)[None, :]
        q64 = q.to(tl.int64)
        col = (head * POINTS + p) * 2
        ox = tl.load(samp_ptr + q64[:, None] * samp_stride + col[None, :], mask=m, other=0.0)
        oy = tl.load(samp_ptr + q64[:, None] * samp_stride + col[None, :] + 1, mask=m, other=0.0)
        att = tl.load(att_ptr + (q64[:, None] * HEADS + head) * POINTS + p[None, :], mask=m, other=0.0)
        rx = tl.load(ref_ptr + q64 * 2, mask=qmask, other=0.0)
        ry = tl.load(ref_ptr + q64 * 2 + 1, mask=qmask, other=0.0)
        wf = width.to(tl.float32)
        hf = height.to(tl.float32)
        lx = rx[:, None] + tl.math.div_rn(ox, wf)
        ly = ry[:, None] + tl.math.div_rn(oy, hf)
        sx = ((2.0 * lx - 1.0 + 1.0) * wf - 1.0) * 0.5  # x·0.5 is x / 2 exactly
        sy = ((2.0 * ly - 1.0 + 1.0) * hf - 1.0) * 0.5
        x0f = tl.floor(sx)
        y0f = tl.floor(sy)
        fx = sx - x0f
        fy = sy - y0f
        # clamp before the integer conversion (a floor of −2 or W already maps to the border), then
        # again after it, so no value (NaN included) can address memory outside the plane
        xi = tl.minimum(tl.maximum(x0f, -2.0), width.to(tl.float32)).to(tl.int32) + 1
        yi = tl.minimum(tl.maximum(y0f, -2.0), height.to(tl.float32)).to(tl.int32) + 1
        x0 = tl.minimum(tl.maximum(xi, 0), width + 1)
        x1 = tl.minimum(tl.maximum(xi + 1, 0), width + 1)
        y0 = tl.minimum(tl.maximum(yi, 0), height + 1)
        y1 = tl.minimum(tl.maximum(yi + 1, 0), height + 1)
        stride = (width + 2).to(tl.int64)
        row0 = y0.to(tl.int64) * stride
        row1 = y1.to(tl.int64) * stride
        a_y0 = att * (1.0 - fy)
        a_y1 = att * fy
        m3 = m[:, :, None] & dmask[None, None, :]
        return row0 + x0, row0 + x1, row1 + x0, row1 + x1, fx, fy, att, a_y0, a_y1, m, m3

    @triton.jit(do_not_specialize=["n", "samp_stride", "table_offset", "height", "width"])
    def _msda_forward_kernel(samp_ptr, att_ptr, ref_ptr, table_ptr, out_ptr, n, samp_stride, table_offset,
                             height, width, HEADS: tl.constexpr, POINTS: tl.constexpr, P2: tl.constexpr,
                             DIM: tl.constexpr, D2: tl.constexpr, BLOCK: tl.constexpr):
        head = tl.program_id(1)
        q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        qmask = q < n
        d = tl.arange(0, D2)
        dmask = d < DIM
        base = table_offset + head.to(tl.int64) * (height + 2) * (width + 2)
        col = d[None, None, :]
        # one point at a time, corners in order, one fused multiply-add per row: embedding_bag's sum
        acc = tl.zeros((BLOCK, 1, D2), dtype=tl.float32)
        for point in tl.static_range(POINTS):
            r00, r01, r10, r11, fx, fy, att, a_y0, a_y1, m, m3 = _corners(
                samp_ptr, att_ptr, ref_ptr, q, qmask, point, dmask, head, samp_stride, height, width, HEADS, POINTS
            )
            v = tl.load(table_ptr + (base + r00)[:, :, None] * DIM + col, mask=m3, other=0.0)
            acc = tl.fma((a_y0 * (1.0 - fx))[:, :, None], v, acc)
            v = tl.load(table_ptr + (base + r01)[:, :, None] * DIM + col, mask=m3, other=0.0)
            acc = tl.fma((a_y0 * fx)[:, :, None], v, acc)
            v = tl.load(table_ptr + (base + r10)[:, :, None] * DIM + col, mask=m3, other=0.0)
            acc = tl.fma((a_y1 * (1.0 - fx))[:, :, None], v, acc)
            v = tl.load(table_ptr + (base + r11)[:, :, None] * DIM + col, mask=m3, other=0.0)
            acc = tl.fma((a_y1 * fx)[:, :, None], v, acc)
        out = tl.sum(acc, axis=1)  # the size-1 point axis: exact
        q64 = q.to(tl.int64)
        tl.store(out_ptr + q64[:, None] * (HEADS * DIM) + head * DIM + d[None, :], out,
                 mask=qmask[:, None] & dmask[None, :])

    @triton.jit
    def _corner_backward(table_ptr, g_table_ptr, rows, weight, g, m3, DIM: tl.constexpr, D2: tl.constexpr):
        """One corner of every (query, point): adds weight·grad to its value rows' gradient, returns row·grad."""
        offsets = rows[:, :, None] * DIM + tl.arange(0, D2)[None, None, :]
        tl.atomic_add(g_table_ptr + offsets, weight[:, :, None] * g, mask=m3, sem="relaxed")
        return tl.sum(tl.load(table_ptr + offsets, mask=m3, other=0.0) * g, axis=2)

    @triton.jit(do_not_specialize=["n", "samp_stride", "height", "width"])
    def _msda_backward_kernel(samp_ptr, att_ptr, ref_ptr, table_ptr, grad_ptr, g_table_ptr, g_samp_ptr, n,
                              samp_stride, height, width, HEADS: tl.constexpr, POINTS: tl.constexpr,
                              P2: tl.constexpr, DIM: tl.constexpr, D2: tl.constexpr, BLOCK: tl.constexpr):
        head = tl.program_id(1)
        q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        qmask = q < n
        q64 = q.to(tl.int64)
        d = tl.arange(0, D2)
        dmask = d < DIM
        g = tl.load(grad_ptr + q64[:, None] * (HEADS * DIM) + head * DIM + d[None, :],
                    mask=qmask[:, None] & dmask[None, :], other=0.0)[:, None, :]
        base = head.to(tl.int64) * (height + 2) * (width + 2)
        row = g_samp_ptr + q64[:, None] * samp_stride
        # one point at a time keeps the gathered tiles (BLOCK, 1, D) small; the attention gradients of all
        # points are collected for the softmax
        pv = tl.arange(0, P2)[None, :]
        g_att_all = tl.zeros((BLOCK, P2), dtype=tl.float32)
        for point in tl.static_range(POINTS):
            r00, r01, r10, r11, fx, fy, att, a_y0, a_y1, m, m3 = _corners(
                samp_ptr, att_ptr, ref_ptr, q, qmask, point, dmask, head, samp_stride, height, width, HEADS, POINTS
            )
            # per corner: d out / d weight = row · grad; d out / d row = weight · grad (scattered)
            gw00 = _corner_backward(table_ptr, g_table_ptr, base + r00, a_y0 * (1.0 - fx), g, m3, DIM, D2)
            gw01 = _corner_backward(table_ptr, g_table_ptr, base + r01, a_y0 * fx, g, m3, DIM, D2)
            gw10 = _corner_backward(table_ptr, g_table_ptr, base + r10, a_y1 * (1.0 - fx), g, m3, DIM, D2)
            gw11 = _corner_backward(table_ptr, g_table_ptr, base + r11, a_y1 * fx, g, m3, DIM, D2)
            # the bilinear products (d source pixel / d offset = size / size = 1)
            g_y0 = gw00 * (1.0 - fx) + gw01 * fx
            g_y1 = gw10 * (1.0 - fx) + gw11 * fx
            g_fx = a_y0 * (gw01 - gw00) + a_y1 * (gw11 - gw10)
            g_fy = att * (g_y1 - g_y0)
            col = head * POINTS * 2 + point * 2
            tl.store(row + col, g_fx, mask=m)
            tl.store(row + col + 1, g_fy, mask=m)
            g_att_all = tl.where(pv == point, g_y0 * (1.0 - fy) + g_y1 * fy, g_att_all)
        # the softmax over the points of each (query, head)
        m = qmask[:, None] & (pv < POINTS)
        att_all = tl.load(att_ptr + (q64[:, None] * HEADS + head) * POINTS + pv, mask=m, other=0.0)
        g_logit = att_all * (g_att_all - tl.sum(att_all * g_att_all, axis=1)[:, None])
        tl.store(row + 2 * HEADS * POINTS + head * POINTS + pv, g_logit, mask=m)


def _check(samp: Tensor, attention: Tensor, ref: Tensor, table: Tensor, heads: int, points: int, height: int,
           width: int, table_offset: int) -> None:
    if samp.dtype != torch.float32:
        raise ValueError(f"msda triton kernel: samp must be float32 (float64 uses the portable path), got {samp.dtype}")
    check_gather_args("triton", samp, attention, ref, table, heads, points, height, width, table_offset,
                      samp.device.type)


def _block() -> int:
    return BLOCK_QUERIES_INTERPRETED if interpreted() else BLOCK_QUERIES


def _sizes(points: int, dim: int) -> dict:
    """Block sizes, and no contraction of a·b + c into FMAs the portable path does not do."""
    return dict(P2=triton.next_power_of_2(points), D2=triton.next_power_of_2(dim), BLOCK=_block(),
                enable_fp_fusion=False)


def msda_forward(
    samp: Tensor, attention: Tensor, ref: Tensor, table: Tensor, heads: int, points: int, height: int, width: int,
    table_offset: int = 0, out: Optional[Tensor] = None,
) -> Tensor:
    """Attention output (n, heads·dim): as :func:`ddpseg.native.msda_forward` (same arguments)."""
    if triton is None:
        raise RuntimeError("msda triton kernel: triton is not installed")
    _check(samp, attention, ref, table, heads, points, height, width, table_offset)
    n, dim = samp.shape[0], table.shape[1]
    if out is None:
        out = samp.new_empty(n, heads * dim)
    if tuple(out.shape) != (n, heads * dim) or not out.is_contiguous() or out.dtype != samp.dtype:
        raise ValueError(f"msda triton kernel: out must be contiguous {samp.dtype} (n, heads·dim) = {(n, heads * dim)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    if n:
        grid = (triton.cdiv(n, _block()), heads)
        with _naming_failures("forward", samp.device, heads, points, dim), _on_device(samp.device):
            _msda_forward_kernel[grid](samp, attention, ref, table, out, n, samp.shape[1], table_offset, height,
                                       width, HEADS=heads, POINTS=points, DIM=dim, **_sizes(points, dim))
    return out


def msda_backward(
    samp: Tensor, attention: Tensor, ref: Tensor, table: Tensor, grad: Tensor, heads: int, points: int, height: int,
    width: int,
) -> Tuple[Tensor, Tensor]:
    """(grad_table (rows, dim), grad_samp (n, heads·points·3)): as :func:`ddpseg.native.msda_backward`."""
    if triton is None:
        raise RuntimeError("msda triton kernel: triton is not installed")
    _check(samp, attention, ref, table, heads, points, height, width, 0)
    n, dim = samp.shape[0], table.shape[1]
    if samp.shape[1] != heads * points * 3:
        raise ValueError(f"msda triton kernel: samp must have heads·points·3 = {heads * points * 3} columns, got {samp.shape[1]}")
    if tuple(grad.shape) != (n, heads * dim) or not grad.is_contiguous() or grad.dtype != samp.dtype:
        raise ValueError(f"msda triton kernel: grad must be contiguous {samp.dtype} (n, heads·dim) = {(n, heads * dim)}, "
                         f"got {grad.dtype} {tuple(grad.shape)}")
    g_table = torch.zeros_like(table)
    g_samp = torch.empty_like(samp)
    if n:
        grid = (triton.cdiv(n, _block()), heads)
        with _naming_failures("backward", samp.device, heads, points, dim), _on_device(samp.device):
            _msda_backward_kernel[grid](samp, attention, ref, table, grad, g_table, g_samp, n, samp.shape[1], height,
                                        width, HEADS=heads, POINTS=points, DIM=dim, **_sizes(points, dim))
    return g_table, g_samp


def _on_device(device: torch.device) -> ContextManager:
    """Triton launches a kernel on the current CUDA device, whatever device its tensors are on: a model on
    ``cuda:1`` while ``cuda:0`` is current (one process with ``--device cuda:1``, ``init_model(device='cuda:1')``)
    would have its kernels refused ("cannot be accessed from Triton") or run on the wrong GPU. The launch is made
    on the tensors' device; the interpreter's CPU tensors need nothing."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def _naming_failures(which: str, device: torch.device, heads: int, points: int, dim: int):
    """A kernel that fails to compile or launch for a configuration the self-check did not cover says what
    failed and how to go on without it."""
    try:
        yield
    except Exception as error:
        raise RuntimeError(f"Triton deformable-attention {which} kernel failed on {device} for heads={heads}, "
                           f"points={points}, dim={dim} ({type(error).__name__}: {error}); set DDPSEG_TRITON=0 to "
                           f"use the portable PyTorch path") from error


def _portable(samp: Tensor, ref: Tensor, table: Tensor, heads: int, points: int, height: int, width: int) -> Tensor:
    """The reference: corners + ``embedding_bag`` over the same head-major table, differentiable in
    ``samp`` and ``table``."""
    from .models.ms_deform_attn import single_level_corners

    index, weight = single_level_corners(samp, ref, heads, points, height, width)
    # single_level_corners numbers rows pixel-major (pixel·heads + head); the table is head-major
    plane = (height + 2) * (width + 2)
    pixel, head = index // heads, index % heads
    rows = head * plane + pixel
    return F.embedding_bag(rows, table, per_sample_weights=weight.reshape(rows.shape), mode="sum").view(samp.shape[0], -1)


def self_check(device: torch.device) -> bool:
    """Run the kernels once on a small problem on ``device`` and compare them with the portable path
    (forward and both gradients). The result is cached per device; a failure warns once."""
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device()
           if device.type == "cuda" else 0)
    if key in _checked:
        return _checked[key]
    with _lock:
        if key in _checked:
            return _checked[key]
        try:
            # whatever the caller's mode: normal tensors, autograd on, full precision
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                error = _compare(device)
        except Exception as exc:  # a compile or launch failure must not break the caller
            error = f"{type(exc).__name__}: {exc}"
        if error:
            warnings.warn(f"ddpseg: Triton deformable-attention kernel disabled on {device}, using the portable "
                          f"PyTorch path ({error})", RuntimeWarning, stacklevel=3)
        _checked[key] = not error
    return _checked[key]


def _compare(device: torch.device) -> str:
    """An empty string when the kernels agree with the portable path on ``device``, else what differed.

    Two problems: odd sizes, and the published configs' decoder (8 heads, 4 points, 32 channels per
    head), so their compiled kernels are the ones checked."""
    for heads, points, height, width, dim in ((2, 3, 5, 7, 8), (8, 4, 6, 9, 32)):
        error = _compare_one(device, heads, points, height, width, dim)
        if error:
            return f"heads {heads}, points {points}, dim {dim}: {error}"
    return ""


def _compare_one(device: torch.device, heads: int, points: int, height: int, width: int, dim: int) -> str:
    gen = torch.Generator().manual_seed(0)
    n = height * width
    samp = (torch.randn(n, heads * points * 3, generator=gen) * 3).to(device)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ref = torch.stack(((xs.reshape(-1) + 0.5) / width, (ys.reshape(-1) + 0.5) / height), -1).to(device)
    table = torch.zeros(heads, height + 2, width + 2, dim)
    table[:, 1:-1, 1:-1] = torch.randn(heads, height, width, dim, generator=gen)
    table = table.view(-1, dim).to(device)
    grad = torch.randn(n, heads * dim, generator=gen).to(device)
    attention = samp[:, heads * points * 2 :].reshape(n, heads, points).softmax(-1)

    out = msda_forward(samp, attention, ref, table, heads, points, height, width)
    g_table, g_samp = msda_backward(samp, attention, ref, table, grad, heads, points, height, width)
    s, t = samp.clone().requires_grad_(), table.clone().requires_grad_()
    expected = _portable(s, ref, t, heads, points, height, width)
    e_samp, e_table = torch.autograd.grad(expected, (s, t), grad)
    for name, got, want in (("forward", out, expected), ("table gradient", g_table, e_table),
                            ("offset/logit gradient", g_samp, e_samp)):
        if not torch.allclose(got, want.detach(), rtol=1e-4, atol=1e-5):
            return f"{name} differs from the portable path by {(got - want).abs().max().item():.3g}"
    return ""
