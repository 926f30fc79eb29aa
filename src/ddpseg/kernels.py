"""Which fused deformable-gather kernel serves a tensor: the native CPU kernel (:mod:`ddpseg.native`),
the Triton GPU kernel (:mod:`ddpseg.triton_msda`), or none (the portable PyTorch path).

Both kernels share one contract: head-major bordered value tables (heads, H+2, W+2, D), the raw
sampling projections, the attention softmax computed by PyTorch, and
``msda_forward(samp, attention, ref, table, heads, points, H, W, table_offset=0, out=None)`` /
``msda_backward(samp, attention, ref, table, grad, heads, points, H, W) -> (grad_table, grad_samp)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

from torch import Tensor

__all__ = ["gather_kernel", "describe", "check_gather_args", "check_contiguous"]


def gather_kernel(*tensors: Tensor) -> Optional[ModuleType]:
    """The kernel module for these tensors, or ``None`` where only the portable path applies."""
    from . import native

    if native.usable(*tensors):
        return native
    if tensors[0].device.type == "cuda":  # imported here: CPU runs never pay for importing Triton
        from . import triton_msda

        if triton_msda.usable(*tensors):
            return triton_msda
    return None


def describe(kernel: Optional[ModuleType]) -> str:
    """A short name for reports."""
    name = getattr(kernel, "__name__", None)
    if name == "ddpseg.native":
        return "native CPU kernel"
    if name == "ddpseg.triton_msda":
        return "Triton GPU kernel"
    return "portable PyTorch (corners + embedding_bag)"


def check_contiguous(kernel: str, name: str, t: Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"msda {kernel} kernel: {name} must be contiguous, got strides {t.stride()}")


def check_gather_args(kernel: str, samp: Tensor, attention: Tensor, ref: Tensor, table: Tensor, heads: int, points: int,
                      height: int, width: int, table_offset: int, device_type: str) -> None:
    """The kernels read raw memory: every size they rely on is checked here, with a ``ValueError`` that
    names the tensor and what was expected. ``kernel`` names the kernel in the message."""
    n = samp.shape[0]
    prefix = f"msda {kernel} kernel"
    if samp.dim() != 2 or samp.shape[1] < heads * points * 3:
        raise ValueError(f"{prefix}: samp must be (n, ≥ heads·points·3 = {heads * points * 3}), got {tuple(samp.shape)}")
    if tuple(attention.shape) != (n, heads, points):
        raise ValueError(f"{prefix}: attention must be (n, heads, points) = {(n, heads, points)}, got {tuple(attention.shape)}")
    if tuple(ref.shape) != (n, 2):
        raise ValueError(f"{prefix}: ref must be (n, 2) = {(n, 2)}, got {tuple(ref.shape)}")
    needed = table_offset + heads * (height + 2) * (width + 2)
    if table.dim() != 2 or table_offset < 0 or table.shape[0] < needed:
        raise ValueError(f"{prefix}: table must be (rows ≥ offset + heads·(H+2)·(W+2) = {needed}, dim), "
                         f"got {tuple(table.shape)} with offset {table_offset}")
    for name, t in (("samp", samp), ("attention", attention), ("ref", ref), ("table", table)):
        check_contiguous(kernel, name, t)
        if t.dtype != samp.dtype or t.device.type != device_type or t.device != samp.device:
            raise ValueError(f"{prefix}: {name} must be a {device_type.upper()} {samp.dtype} tensor on {samp.device}, "
                             f"got {t.device} {t.dtype}")
