"""Test helper: where the Triton kernels of ddpseg.triton_msda can run in this test session."""

from __future__ import annotations

import pytest
import torch

from ddpseg import triton_msda


def triton_device() -> torch.device:
    """CUDA where there is a GPU; else the CPU through Triton's interpreter (conftest sets
    ``TRITON_INTERPRET=1`` before ddpseg imports triton). Skips where Triton is not installed."""
    if not triton_msda.triton_available():
        pytest.skip("triton is not installed (pip install triton; CUDA builds of torch include it)")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not triton_msda.interpreted():
        pytest.skip("no CUDA device and TRITON_INTERPRET is not set")
    import triton

    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 2):
        # 3.1's interpreter refuses constexpr literals in called jit functions and does not write CPU tensors back
        pytest.skip(f"triton {triton.__version__}'s interpreter cannot run these kernels on CPU tensors (3.2 or newer "
                    "can); on a GPU the kernels' first use is checked against the portable path")
    return torch.device("cpu")


def interpreter_fuses_fma() -> bool:
    """Whether Triton's interpreter rounds ``tl.fma`` once, as hardware does (older interpreters multiply and
    add, rounding twice): a·a − (1 + 2⁻¹¹) with a = 1 + 2⁻¹² is 2⁻²⁴ fused and 0 otherwise."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr, out_ptr):
        a = tl.load(x_ptr)
        tl.store(out_ptr, tl.fma(a, a, tl.load(x_ptr + 1)))

    x = torch.tensor([1 + 2.0**-12, -(1 + 2.0**-11)])
    out = torch.zeros(1)
    probe[(1,)](x, out)
    return out.item() == 2.0**-24
