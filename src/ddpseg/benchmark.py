"""Speed, memory and FLOP measurements of a config's model; ``ddpseg benchmark`` prints them as tables.

Every number comes from this run: latencies are medians over ``repeats`` after ``warmup`` runs, the
matmul ceiling is a float32 (or the run's dtype) square matmul timed in the same process, FLOPs come
from ``torch.utils.flop_counter`` (matmuls and convolutions; the deformable gather is memory work
and counts none).
"""

from __future__ import annotations

import contextlib
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["InferenceRow", "BenchmarkReport", "measure_inference", "measure_train_step", "matmul_ceiling", "format_report"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096, repeats: int = 5) -> float:
    """Achieved FLOP/s of a square matmul: the practical ceiling for the decoder's dense work."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats, warmup=1)
    return 2 * size**3 / seconds


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn`` by torch's counter; sparse matrix products count 2·nnz per output column, not as dense."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    aten = torch.ops.aten
    mapping = {op: _sparse_aware_matmul(flop_registry[op]) for op in (aten.mm, aten.addmm)}
    mapping[aten.sparse_sampled_addmm] = _sampled_addmm_flop
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def _sparse_aware_matmul(dense_formula: Callable) -> Callable:
    def formula(*args, out_val=None, **kwargs):
        a, b = args[-2], args[-1]  # mm(a, b) / addmm(bias, a, b)
        if a.layout != torch.strided:
            return 2 * a._nnz() * b.shape[-1]
        if b.layout != torch.strided:
            return 2 * b._nnz() * a.shape[0]
        return dense_formula(*args, out_val=out_val, **kwargs)

    formula._get_raw = True
    return formula


def _sampled_addmm_flop(pattern, mat1, mat2, *args, out_val=None, **kwargs) -> int:
    return 2 * pattern._nnz() * mat1.shape[-1]


_sampled_addmm_flop._get_raw = True


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA's allocator peak on a GPU; the process's peak resident set on the CPU.

    On Linux that is ``VmHWM`` of ``/proc/self/status``, the peak of this process image: ``ru_maxrss`` is not,
    since a child starts with its parent's resident set as its maximum and keeps it across ``exec`` (a
    training step measured in a fresh process after a large inference run would report the parent's peak).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@dataclass
class InferenceRow:
    steps: int
    encoder_s: float
    step_s: float
    total_s: float
    images_per_s: float
    peak_mib: float
    encoder_gflop: float
    step_gflop: float

    @property
    def total_gflop(self) -> float:
        return self.encoder_gflop + self.steps * self.step_gflop


@dataclass
class BenchmarkReport:
    config: str
    shape: Sequence[int]
    batch: int
    device: str
    dtype: str
    threads: int
    torch_version: str
    ceiling_gflops: float
    rows: List[InferenceRow] = field(default_factory=list)
    train: Optional[Dict[str, float]] = None
    notes: List[str] = field(default_factory=list)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def measure_inference(
    model,
    shape: Sequence[int],
    steps_list: Sequence[int],
    *,
    batch: int = 1,
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    amp_dtype: Optional[torch.dtype] = None,
) -> List[InferenceRow]:
    """Encoder (backbone + neck) time, per-step decoder time and end-to-end latency for each step count."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    img = torch.randn(batch, 3, *shape, device=device, generator=gen)
    with _autocast(device, amp_dtype):
        encoder_s = timed(lambda: model.extract_feat(img), device, repeats, warmup)
        x = model.extract_feat(img)
        noise = torch.randn(model.randsteps * batch, *x.shape[1:], device=device, generator=gen, dtype=x.dtype)
        encoder_flop = count_flops(lambda: model.extract_feat(img))
        step_flop = count_flops(lambda: model.sample_features(x, steps=1, noise=noise))
        rows = []
        for steps in steps_list:
            decode_s = timed(lambda: model.sample_features(x, steps=steps, noise=noise), device, repeats, warmup)
            total_s = timed(lambda: model.sample_logits(img, steps=steps, noise=noise), device, repeats, warmup)
            rows.append(
                InferenceRow(
                    steps=steps,
                    encoder_s=encoder_s,
                    step_s=decode_s / steps,
                    total_s=total_s,
                    images_per_s=batch / total_s,
                    peak_mib=peak_memory_mib(device),
                    encoder_gflop=encoder_flop / 1e9,
                    step_gflop=step_flop / 1e9,
                )
            )
    return rows


def measure_train_step(
    model, shape: Sequence[int], *, batch: int = 1, device: torch.device, repeats: int = 3, warmup: int = 1,
    amp_dtype: Optional[torch.dtype] = None,
) -> Dict[str, float]:
    """Forward + backward + AdamW step time of ``forward_train`` on random data, and peak memory; fp16 steps
    through a grad scaler, as training runs them."""
    model.train()
    gen = torch.Generator(device=device).manual_seed(0)
    img = torch.randn(batch, 3, *shape, device=device, generator=gen)
    gt = torch.randint(0, model.num_classes, (batch, 1, *shape), device=device, generator=gen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            losses = model.forward_train(img, gt)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, repeats, warmup)
    flop = count_flops(step)
    return {"step_s": seconds, "peak_mib": peak_memory_mib(device), "gflop": flop / 1e9}


def format_report(report: BenchmarkReport, reference: Optional[dict] = None) -> str:
    """Markdown tables: one row per step count, then the training step; optional original's numbers."""
    ceiling = report.ceiling_gflops
    lines = [
        f"config: {report.config}",
        f"input: {report.batch}×3×{report.shape[0]}×{report.shape[1]}, device {report.device}, dtype {report.dtype}, "
        f"torch {report.torch_version}, {report.threads} threads",
        f"matmul ceiling (this run): {ceiling:.1f} GFLOP/s",
        "",
        "| steps | backbone+neck s | per-step decoder s | total latency s | images/s | peak MiB | GFLOP (total) "
        "| GFLOP/step | achieved GFLOP/s | step ÷ FLOP floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        floor = r.step_gflop / ceiling
        achieved = r.total_gflop / r.total_s
        lines.append(
            f"| {r.steps} | {r.encoder_s:.3f} | {r.step_s:.3f} | {r.total_s:.3f} | {r.images_per_s:.3f} | {r.peak_mib:.0f} "
            f"| {r.total_gflop:.1f} | {r.step_gflop:.1f} | {achieved:.1f} | {r.step_s / floor:.2f}× |"
        )
    if report.train:
        t = report.train
        lines += [
            "",
            "| training step (fwd+bwd+AdamW) s | peak MiB | GFLOP | achieved GFLOP/s |",
            "|---:|---:|---:|---:|",
            f"| {t['step_s']:.3f} | {t['peak_mib']:.0f} | {t['gflop']:.1f} | {t['gflop'] / t['step_s']:.1f} |",
        ]
    if reference:
        lines += ["", "original implementation, same machine kind (from the reference file, not this run):"]
        lines.append(
            "| backbone+neck s | per extra step s | 3 steps s | train step s | train peak GiB |\n|---:|---:|---:|---:|---:|\n"
            f"| {reference.get('backbone_plus_neck_s', float('nan'))} | {reference.get('per_extra_step_s', float('nan'))} "
            f"| {reference.get('ddim_3_steps_s', float('nan'))} | {reference.get('train_step_batch1_512x1024_s', float('nan'))} "
            f"| {reference.get('train_peak_rss_GiB', float('nan'))} |"
        )
        by_steps = {r.steps: r for r in report.rows}
        if 3 in by_steps and reference.get("ddim_3_steps_s"):
            lines.append(f"\n3-step latency vs original: {by_steps[3].total_s / reference['ddim_3_steps_s']:.2f}×")
        if report.train and reference.get("train_step_batch1_512x1024_s"):
            lines.append(
                f"train step vs original: {report.train['step_s'] / reference['train_step_batch1_512x1024_s']:.2f}×, "
                f"peak memory vs original: {report.train['peak_mib'] / 1024 / reference['train_peak_rss_GiB']:.2f}×"
            )
    lines += [""] + [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
