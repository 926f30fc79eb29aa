"""The Triton kernels of the deformable gather (ddpseg.triton_msda) against the portable PyTorch path.

Without a GPU they run in Triton's interpreter on CPU tensors (see tests/triton_kernel.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddpseg import kernels, native, triton_msda
from ddpseg.models.ms_deform_attn import single_level_corners, single_level_corners_with_backward
from ddpseg.models.train_decoder import _gather_backward

from ..triton_kernel import interpreter_fuses_fma, triton_device
from .decoder_inputs import gather_problem, softmax_attention


def _on(device, *tensors):
    return [t.to(device) for t in tensors]


@pytest.fixture(autouse=True)
def _several_programs(monkeypatch):
    """Small blocks (32 queries), so the interpreter runs several programs per head, the last one partial."""
    monkeypatch.setattr(triton_msda, "BLOCK_QUERIES_INTERPRETED", 32)


@pytest.mark.parametrize("dim,points", [(32, 3), (8, 4), (5, 1)])
def test_forward_matches_corners_and_embedding_bag(dim, points):
    device = triton_device()
    samp, ref, table, head_major, (heads, points, h, w) = gather_problem(torch.float32, dim=dim, points=points)
    plane = (h + 2) * (w + 2) * heads
    attention = softmax_attention(samp, heads, points)
    for b in range(2):  # image 1 sits at a row offset of the batched table
        index, weight = single_level_corners(samp, ref, heads, points, h, w, b * plane)
        expected = F.embedding_bag(
            index, table.view(-1, dim), per_sample_weights=weight.view(-1, points * 4), mode="sum"
        ).view(samp.shape[0], -1)
        s, a, r, t = _on(device, samp, attention, ref, head_major.view(-1, dim))
        got = triton_msda.msda_forward(s, a, r, t, heads, points, h, w, b * plane).cpu()
        if _interpreted_on_an_fma_cpu(device):  # the same operations in the same order, as numpy runs them
            assert torch.equal(got, expected)
        else:  # a GPU's embedding_bag may round its products differently
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=4 * points * 1.2e-7 * expected.abs().max().item())


def _interpreted_on_an_fma_cpu(device) -> bool:
    """On the CPU, embedding_bag sums with fused multiply-adds where the CPU has them (what the native
    kernel's FMA probe reports), as the kernel does where the interpreter rounds an FMA once."""
    lib = native.msda_library() if device.type == "cpu" else None
    return lib is not None and bool(lib.ddpseg_msda_has_fma()) and interpreter_fuses_fma()


def test_backward_matches_the_portable_gradients():
    device = triton_device()
    samp, ref, table, head_major, (heads, points, h, w) = gather_problem(torch.float32)
    dim = table.shape[-1]
    flat, hm = table[0].reshape(-1, dim), head_major[0].reshape(-1, dim)
    grad = torch.randn(samp.shape[0], heads * dim, generator=torch.Generator().manual_seed(1))
    index, weight, corners_backward = single_level_corners_with_backward(samp, ref, heads, points, h, w)
    g_weight, g_rows = _gather_backward(flat, index, weight, grad)
    expected_g_samp = corners_backward(g_weight)

    s, a, r, t, g = _on(device, samp, softmax_attention(samp, heads, points), ref, hm, grad)
    g_table, g_samp = (x.cpu() for x in triton_msda.msda_backward(s, a, r, t, g, heads, points, h, w))
    g_table = g_table.view(heads, h + 2, w + 2, dim).permute(1, 2, 0, 3).reshape(-1, dim)
    # border rows collect the gradient of clamped corners in both; compare every row
    torch.testing.assert_close(g_table, g_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_samp, expected_g_samp, rtol=1e-4, atol=1e-4)
    assert g_samp.abs().max() > 1 and g_table.abs().max() > 0.1  # gradients of a real size were compared


def test_agrees_with_the_native_kernel_on_the_same_problem():
    device = triton_device()
    if not native.usable(torch.zeros(1)):
        pytest.skip("no native kernel here")
    samp, ref, _, head_major, (heads, points, h, w) = gather_problem(torch.float32, height=11, width=6, seed=3)
    table = head_major.view(-1, head_major.shape[-1])
    grad = torch.randn(samp.shape[0], heads * table.shape[1], generator=torch.Generator().manual_seed(2))
    attention = softmax_attention(samp, heads, points)
    expected = [native.msda_forward(samp, attention, ref, table, heads, points, h, w),
                *native.msda_backward(samp, attention, ref, table, grad, heads, points, h, w)]
    s, a, r, t, g = _on(device, samp, attention, ref, table, grad)
    got = [triton_msda.msda_forward(s, a, r, t, heads, points, h, w),
           *triton_msda.msda_backward(s, a, r, t, g, heads, points, h, w)]
    for name, x, y in zip(("forward", "table gradient", "samp gradient"), got, expected):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-4, atol=1e-5, msg=name)


def test_empty_query_set_launches_nothing():
    device = triton_device()
    samp, ref, _, head_major, (heads, points, h, w) = gather_problem(torch.float32)
    dim = head_major.shape[-1]
    s, a, r, t = _on(device, samp[:0], softmax_attention(samp[:0], heads, points), ref[:0], head_major.view(-1, dim))
    assert triton_msda.msda_forward(s, a, r, t, heads, points, h, w).shape == (0, heads * dim)


def test_bad_inputs_name_the_tensor_and_the_expected_shape():
    if not triton_msda.triton_available():
        pytest.skip("triton is not installed")
    samp, ref, _, head_major, (heads, points, h, w) = gather_problem(torch.float32)
    table = head_major[0].reshape(-1, head_major.shape[-1])
    attention = softmax_attention(samp, heads, points)
    with pytest.raises(ValueError, match=r"attention must be \(n, heads, points\)"):
        triton_msda.msda_forward(samp, attention[:, :1], ref, table, heads, points, h, w)
    with pytest.raises(ValueError, match="samp must be contiguous"):
        triton_msda.msda_forward(samp.t().contiguous().t(), attention, ref, table, heads, points, h, w)
    with pytest.raises(ValueError, match=r"table must be \(rows ≥ offset"):
        triton_msda.msda_forward(samp, attention, ref, table, heads, points, h, w, table_offset=1)
    with pytest.raises(ValueError, match="must be float32"):
        triton_msda.msda_forward(samp.double(), attention, ref, table, heads, points, h, w)
    with pytest.raises(ValueError, match=r"grad must be contiguous"):
        triton_msda.msda_backward(samp, attention, ref, table, samp, heads, points, h, w)


def test_self_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    device = triton_device()
    assert triton_msda._compare(device) == ""
    forward = triton_msda.msda_forward
    monkeypatch.setattr(triton_msda, "msda_forward", lambda *a, **k: forward(*a, **k) * 1.01)
    assert triton_msda._compare(device).startswith("heads 2, points 3, dim 8: forward differs from the portable path")


def test_self_check_passes_under_inference_mode_and_autocast(monkeypatch):
    """Users may first reach the kernel inside ``torch.inference_mode()`` or autocast; the check must still
    compare in float32 with autograd (a failure there would switch the kernel off for the whole process)."""
    device = triton_device()
    monkeypatch.setattr(triton_msda, "_checked", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed check warns
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            assert triton_msda.self_check(device)


def test_a_failing_self_check_warns_once_and_disables_the_kernel(monkeypatch):
    monkeypatch.setattr(triton_msda, "_checked", {})
    monkeypatch.setattr(triton_msda, "_compare", lambda device: 1 / 0)
    device = torch.device("cuda", 7)
    with pytest.warns(RuntimeWarning, match="Triton deformable-attention kernel disabled on cuda:7.*ZeroDivisionError"):
        assert not triton_msda.self_check(device)
    assert not triton_msda.self_check(device)  # decided once per device: no second warning


def test_kernels_launch_on_their_tensors_gpu_not_the_current_one(monkeypatch):
    """Triton launches on the current CUDA device: a model on cuda:1 while cuda:0 is current (one process with
    --device cuda:1) needs the launch made on cuda:1. Checked here without a GPU: the launches happen inside
    ``_on_device(samp.device)``, which enters ``torch.cuda.device`` for CUDA tensors."""
    from types import SimpleNamespace

    entered = []

    class CudaDevice:  # stands in for torch.cuda.device, which needs CUDA
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.pop()

    monkeypatch.setattr(torch.cuda, "device", CudaDevice)
    with triton_msda._on_device(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    assert entered == []
    with triton_msda._on_device(torch.device("cpu")):  # Triton's interpreter: nothing to switch
        assert entered == []

    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(list(entered))

    monkeypatch.setattr(triton_msda, "triton", SimpleNamespace(cdiv=lambda a, b: -(-a // b),
                                                               next_power_of_2=lambda n: 1 << (n - 1).bit_length()))
    monkeypatch.setattr(triton_msda, "_msda_forward_kernel", Kernel(), raising=False)
    monkeypatch.setattr(triton_msda, "_msda_backward_kernel", Kernel(), raising=False)
    monkeypatch.setattr(triton_msda, "_on_device", lambda device: CudaDevice(torch.device("cuda", 1)))
    samp, ref, _, head_major, (heads, points, h, w) = gather_problem(torch.float32)
    dim = head_major.shape[-1]
    table = head_major[0].reshape(-1, dim)
    attention = softmax_attention(samp, heads, points)
    triton_msda.msda_forward(samp, attention, ref, table, heads, points, h, w)
    triton_msda.msda_backward(samp, attention, ref, table, samp.new_zeros(samp.shape[0], heads * dim), heads, points,
                              h, w)
    assert launches == [[torch.device("cuda", 1)]] * 2


def test_selection(monkeypatch):
    cpu = torch.zeros(2)
    assert not triton_msda.usable(cpu)  # the CPU has the native kernel or the portable path
    assert kernels.gather_kernel(cpu) is (native if native.usable(cpu) else None)
    monkeypatch.setenv("DDPSEG_NATIVE", "0")
    assert kernels.gather_kernel(cpu) is None
    assert kernels.describe(None).startswith("portable PyTorch")
    assert kernels.describe(triton_msda) == "Triton GPU kernel"
    monkeypatch.setenv("DDPSEG_TRITON", "0")
    assert not triton_msda.triton_enabled()
    if torch.cuda.is_available():
        assert not triton_msda.usable(torch.zeros(2, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_deterministic_mode_keeps_the_atomic_backward_out_of_training(monkeypatch):
    if not triton_msda.triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("DDPSEG_TRITON", "1")
    x = torch.zeros(2, device="cuda")
    assert triton_msda.usable(x)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert not triton_msda.usable(x)  # with gradients: the portable path
        with torch.no_grad():
            assert triton_msda.usable(x)  # inference has no backward: the deterministic forward kernel runs
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_kernels_compile_for_a100_and_h100_without_a_gpu():
    """Triton compiles the kernels to PTX and cubins for sm_80 and sm_90 here (its bundled ptxas): what the
    interpreter cannot check. The PTX keeps the portable path's arithmetic: IEEE divisions only, and no
    multiply-add contracted beyond the forward's own FMAs (4 corners × points per output element); and no
    registers spill."""
    if not triton_msda.triton_available():
        pytest.skip("triton is not installed")
    script = Path(__file__).resolve().parents[1] / "triton_compile.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script), "80", "90"], capture_output=True, text=True, env=env,
                            timeout=300)
    if result.returncode == 3:  # triton_compile.UNSUPPORTED
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(r["kernel"], r["arch"]) for r in rows} == {
        (k, a) for k in ("_msda_forward_kernel", "_msda_backward_kernel") for a in (80, 90)
    }
    threads = 4 * 32  # Triton's default: 4 warps
    for r in rows:
        assert r["cubin_bytes"] > 0
        assert r.get("stack_bytes", 0) == 0, r  # nothing spilled to local memory at the chosen block size
        assert r["div.rn.f32"] > 0 and r["div.full.f32"] == 0 and r["div.approx.f32"] == 0, r
        if r["kernel"] == "_msda_forward_kernel":
            assert r["fma.rn.f32"] == 4 * 4 * triton_msda.BLOCK_QUERIES * 32 // threads, r  # points 4, dim 32
        else:
            assert r["fma.rn.f32"] == 0 and r["atom.global"] + r["red.global"] > 0, r


def test_a_kernel_failure_names_the_configuration_and_the_way_out(monkeypatch):
    device = triton_device()
    samp, ref, _, head_major, (heads, points, h, w) = gather_problem(torch.float32)
    table = head_major[0].reshape(-1, head_major.shape[-1])

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise IndexError("out of resources")
            return launch

    monkeypatch.setattr(triton_msda, "_msda_forward_kernel", Broken())
    s, a, r, t = _on(device, samp, softmax_attention(samp, heads, points), ref, table)
    with pytest.raises(RuntimeError, match=r"forward kernel failed .* heads=4, points=3, dim=32 .*DDPSEG_TRITON=0"):
        triton_msda.msda_forward(s, a, r, t, heads, points, h, w)
