"""The benchmark's FLOP counting (dense matmuls by torch's formulas, sparse products by their non-zeros) and
the `ddpseg benchmark` command."""

from __future__ import annotations

import runpy
import warnings
from pathlib import Path

import pytest
import torch

from ddpseg.benchmark import count_flops


def _csr(rows: int, cols: int, per_row: int) -> torch.Tensor:
    crow = torch.arange(0, rows * per_row + 1, per_row)
    col = torch.randint(0, cols, (rows * per_row,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, torch.rand(rows * per_row), size=(rows, cols))


def test_dense_matmuls_count_as_torch_counts_them():
    a, b = torch.randn(100, 32), torch.randn(32, 50)
    assert count_flops(lambda: a @ b) == 2 * 100 * 32 * 50
    assert count_flops(lambda: torch.addmm(torch.randn(50), a, b)) == 2 * 100 * 32 * 50


def test_sparse_products_count_their_nonzeros_not_the_dense_shape():
    sparse = _csr(100, 60_000, 4)
    assert count_flops(lambda: sparse @ torch.randn(60_000, 8)) == 2 * 400 * 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flops = count_flops(lambda: torch.sparse.sampled_addmm(sparse, torch.randn(100, 8), torch.randn(8, 60_000), beta=0))
    assert flops == 2 * 400 * 8


@pytest.mark.parametrize("switch", ["1", "0"])
def test_benchmark_command_prints_its_table_and_which_gather_ran(capsys, monkeypatch, switch):
    from ddpseg import native
    from ddpseg.cli import main

    monkeypatch.setenv("DDPSEG_NATIVE", switch)
    config = Path(__file__).resolve().parents[1] / "configs/quickstart/ddp_convnext_mini_synthetic.py"
    assert main(["benchmark", str(config), "--shape", "32", "64", "--steps", "1", "--repeats", "1",
                 "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out  # the 1-step row
    expected = "native CPU kernel" if native.usable(torch.zeros(1)) else "portable PyTorch"
    assert f"note: deformable gather: {expected}" in out
    if switch == "0":
        assert expected == "portable PyTorch"


@pytest.mark.parametrize("device, message", [
    ("cuda", "--device cuda: CUDA is not available here (torch "),
    ("gpu", "--device gpu: not a device; expected cpu, cuda or cuda:N"),
])
def test_benchmark_command_reports_a_device_that_is_not_here_in_one_line(capsys, monkeypatch, device, message):
    from ddpseg.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = Path(__file__).resolve().parents[1] / "configs/quickstart/ddp_convnext_mini_synthetic.py"
    assert main(["benchmark", str(config), "--device", device]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ddpseg benchmark: error: {message}") and err.count("\n") == 1


def test_gather_kernel_benchmark_times_both_paths_and_checks_the_kernel_against_portable(capsys):
    from ddpseg import native

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gather_kernels.py"
    main = runpy.run_path(str(script))["main"]
    assert main(["--device", "cpu", "--size", "9", "13", "--heads", "2", "--points", "3", "--dim", "8",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| portable (corners + embedding_bag) |" in out
    if native.usable(torch.zeros(1)):
        assert "| native CPU kernel |" in out
        if native.msda_library().ddpseg_msda_has_fma():  # bit-equal there (tests/models/test_native.py)
            assert "max |forward − portable| 0 |" in out


def test_decoder_profile_ranks_the_operators_of_the_denoising_steps(capsys):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_decoder.py"
    config = Path(__file__).resolve().parents[1] / "configs/quickstart/ddp_convnext_mini_synthetic.py"
    main = runpy.run_path(str(script))["main"]
    assert main([str(config), "--shape", "32", "64", "--steps", "2", "--rows", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 steps, amp fp32" in out and "aten::" in out and "Self CPU time total" in out
    with pytest.raises(SystemExit):
        main([str(config), "--steps", "0"])
    assert "argument --steps: 0: expected a positive integer" in capsys.readouterr().err


def test_cpu_peak_memory_of_a_fresh_process_excludes_its_parents():
    """ru_maxrss of a spawned child starts at the parent's resident set; the benchmark's training step runs in
    such a child after the inference rows, so its peak must be the child's own (VmHWM on Linux)."""
    import multiprocessing
    import platform

    from ddpseg.benchmark import peak_memory_mib

    if platform.system() != "Linux":
        pytest.skip("VmHWM is Linux's")
    cpu = torch.device("cpu")
    ballast = torch.ones(800 * 2**20 // 4)  # 800 MiB resident in this process
    parent = peak_memory_mib(cpu)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(peak_memory_mib, (cpu,))
    assert parent > 800 and child < parent - 500, (parent, child)
    del ballast


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be step counts >= 1, got 0"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--shape", "8", "64"], "--shape must be two sizes >= 32"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
])
def test_benchmark_command_names_a_bad_number_in_one_line(args, message, capsys):
    from ddpseg.cli import main

    config = Path(__file__).resolve().parents[1] / "configs/quickstart/ddp_convnext_mini_synthetic.py"
    assert main(["benchmark", str(config), *args]) == 1
    err = capsys.readouterr().err
    assert f"ddpseg benchmark: error: {message}" in err and "Traceback" not in err
