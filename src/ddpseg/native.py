"""The optional native CPU kernels: the deformable attention sampling (``csrc/msda_cpu.cpp``) and an exact,
faster replay of torch's serial normal draw (``csrc/normal_cpu.cpp``, :func:`randn_like`).

The kernels are small C++ files with a plain C interface, built on first use with the system's C++
compiler (about two seconds; no PyTorch headers) into one library, loaded with ctypes. The shared library is cached
under ``$DDPSEG_CACHE_DIR`` (default ``~/.cache/ddpseg``) in a folder named by a hash of the source,
the compiler command and the CPU, and is written atomically, so concurrent processes are safe.

Nothing depends on it: when there is no compiler, the build fails, or ``DDPSEG_NATIVE=0`` is set, the
portable PyTorch path runs (one warning says why, unless the variable switched it off). The kernel
computes the portable path's forward bit for bit where the build has FMA (checked on load), and its
backward equals the portable backward up to float rounding (tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .kernels import check_contiguous, check_gather_args

__all__ = ["msda_library", "native_enabled", "usable", "msda_forward", "msda_backward", "cache_dir", "randn_like"]

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = (_CSRC / "msda_cpu.cpp", _CSRC / "normal_cpu.cpp")  # one library
_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared", "-pthread"]
_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_tried = False


def cache_dir() -> Path:
    return Path(os.environ.get("DDPSEG_CACHE_DIR") or Path.home() / ".cache" / "ddpseg")


def native_enabled() -> bool:
    """Whether the native kernel may be used (``DDPSEG_NATIVE=0`` switches it off)."""
    return os.environ.get("DDPSEG_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    info = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    info += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return platform.machine() + platform.processor() + info


def _arch_flags() -> list:
    return ["-march=native"] if platform.machine() in ("x86_64", "AMD64", "i686") else ["-mcpu=native"]


def _build(compiler: str) -> Path:
    flags = _FLAGS + _arch_flags()
    source = b"".join(path.read_bytes() for path in _SOURCES)
    key = hashlib.sha256(source + " ".join([compiler] + flags).encode() + _cpu_signature().encode()).hexdigest()[:16]
    target = cache_dir() / "native" / key / "libddpseg_msda.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *flags, *map(str, _SOURCES), "-o", tmp], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            names = ", ".join(str(path) for path in _SOURCES)
            raise RuntimeError(f"{compiler} failed on {names}:\n{result.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"ddpseg_msda_forward_{suffix}")
        fwd.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i64, ptr, cint]
        fwd.restype = None
        bwd = getattr(lib, f"ddpseg_msda_backward_{suffix}")
        bwd.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i64, ptr, ptr, cint]
        bwd.restype = None
    lib.ddpseg_msda_has_fma.restype = cint
    lib.ddpseg_serial_normal_f32.argtypes = [ptr, i64, ptr, i64, ctypes.c_double, ctypes.c_double, cint]
    lib.ddpseg_serial_normal_f32.restype = cint


def msda_library() -> Optional[ctypes.CDLL]:
    """The loaded kernel, building it on first call; ``None`` where it is unavailable or switched off."""
    global _library, _tried
    if not native_enabled():
        return None
    if _tried:
        return _library
    with _lock:
        if _tried:
            return _library
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
            lib = ctypes.CDLL(str(_build(compiler)))
            _declare(lib)
            _library = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            warnings.warn(
                f"ddpseg: native deformable-attention kernel unavailable, using the portable PyTorch path ({error})",
                RuntimeWarning,
                stacklevel=2,
            )
            _library = None
        _tried = True
    return _library


def usable(*tensors: Tensor) -> bool:
    """Whether the kernel applies: CPU float32/float64 tensors of one dtype, kernel available."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != first.dtype for t in tensors):
        return False
    return msda_library() is not None


def _suffix(t: Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def msda_forward(
    samp: Tensor, attention: Tensor, ref: Tensor, table: Tensor, heads: int, points: int, height: int, width: int,
    table_offset: int = 0, out: Optional[Tensor] = None,
) -> Tensor:
    """Attention output (n, heads·dim) of n queries: ``embedding_bag`` over :func:`single_level_corners`.

    samp (n, heads·points·3) raw projections (offsets first), attention (n, heads, points) its softmax,
    ref (n, 2), table (rows, dim) the bordered value table.
    """
    lib = msda_library()
    n = samp.shape[0]
    dim = table.shape[1]
    check_gather_args("native", samp, attention, ref, table, heads, points, height, width, table_offset, "cpu")
    if out is None:
        out = samp.new_empty(n, heads * dim)
    check_contiguous("native", "out", out)
    if tuple(out.shape) != (n, heads * dim) or out.dtype != samp.dtype:
        raise ValueError(f"msda native kernel: out must be {samp.dtype} (n, heads·dim) = {(n, heads * dim)}, got {out.dtype} {tuple(out.shape)}")
    getattr(lib, f"ddpseg_msda_forward_{_suffix(samp)}")(
        samp.data_ptr(), attention.data_ptr(), ref.data_ptr(), table.data_ptr(), n, samp.shape[1], heads, points,
        height, width, dim, table_offset, out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def msda_backward(
    samp: Tensor, attention: Tensor, ref: Tensor, table: Tensor, grad: Tensor, heads: int, points: int, height: int,
    width: int,
):
    """(grad_table (rows, dim), grad_samp (n, heads·points·3)) of :func:`msda_forward` (table_offset 0)."""
    lib = msda_library()
    n = samp.shape[0]
    rows, dim = table.shape
    check_gather_args("native", samp, attention, ref, table, heads, points, height, width, 0, "cpu")
    if samp.shape[1] != heads * points * 3:
        raise ValueError(f"msda native kernel: samp must have heads·points·3 = {heads * points * 3} columns, got {samp.shape[1]}")
    check_contiguous("native", "grad", grad)
    if tuple(grad.shape) != (n, heads * dim) or grad.dtype != samp.dtype:
        raise ValueError(f"msda native kernel: grad must be {samp.dtype} (n, heads·dim) = {(n, heads * dim)}, got {grad.dtype} {tuple(grad.shape)}")
    g_table = torch.zeros_like(table)
    g_samp = torch.empty_like(samp)
    getattr(lib, f"ddpseg_msda_backward_{_suffix(samp)}")(
        samp.data_ptr(), attention.data_ptr(), ref.data_ptr(), table.data_ptr(), grad.data_ptr(), n, samp.shape[1],
        heads, points, height, width, dim, rows, g_table.data_ptr(), g_samp.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return g_table, g_samp


_normal_checked: Optional[bool] = None


def randn_like(t: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """``torch.randn_like(t)`` drawn from ``generator`` (default: torch's), bit for bit, and the generator
    left exactly where torch would leave it.

    For a float32 CPU tensor that is not contiguous but dense (channels-last noise, say), torch draws
    element by element (its serial path, ≈ 40 ns per value); the native kernel replays the same MT19937
    stream and Box–Muller pairs and spreads the transcendental part over the threads. Everything else,
    and everywhere the kernel is unavailable or its first-use check against torch fails (one warning),
    is ``torch.randn_like`` itself.
    """
    lib = msda_library() if _drawn_serially(t) else None
    if lib is None or not _normal_check(lib):
        return torch.empty_like(t).normal_(generator=generator)  # what torch.randn_like(t) does
    return _replay_normal(lib, t, generator or torch.default_generator)


def _drawn_serially(t: Tensor) -> bool:
    """Whether torch fills ``t`` by its serial path in memory order: float32 on the CPU, not contiguous,
    and dense (its strides a permutation of a contiguous layout)."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.is_contiguous() or t.numel() == 0:
        return False
    expected = 1
    dims = [(stride, size) for size, stride in zip(t.shape, t.stride()) if size != 1]
    for stride, size in sorted(dims):
        if stride != expected:
            return False
        expected *= size
    return True


def _replay_normal(lib: ctypes.CDLL, t: Tensor, generator: torch.Generator) -> Tensor:
    out = torch.empty_like(t)  # dense: keeps t's strides
    flat = out.as_strided((out.numel(),), (1,), out.storage_offset())
    state = generator.get_state().clone()
    status = lib.ddpseg_serial_normal_f32(state.data_ptr(), state.numel(), flat.data_ptr(), flat.numel(), 0.0, 1.0,
                                          torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"native normal draw: generator state of {state.numel()} bytes, expected 5056")
    generator.set_state(state)
    return out


def _normal_check(lib: ctypes.CDLL) -> bool:
    """Once per process: the replay against torch on channels-last and permuted tensors, odd and even sizes,
    with and without a cached second value: values and the generator's final state must be identical."""
    global _normal_checked
    if _normal_checked is None:
        try:
            ok = _normal_matches_torch(lib)
        except (RuntimeError, ValueError) as error:
            ok = False
            warnings.warn(f"ddpseg: native normal draw disabled ({error})", RuntimeWarning, stacklevel=3)
        else:
            if not ok:
                warnings.warn("ddpseg: native normal draw disabled: it differs from torch's serial draw here",
                              RuntimeWarning, stacklevel=3)
        _normal_checked = ok
    return _normal_checked


def _normal_matches_torch(lib: ctypes.CDLL) -> bool:
    theirs, ours = torch.Generator().manual_seed(20240611), torch.Generator().manual_seed(20240611)
    shapes = [((2, 5, 3, 7), torch.channels_last), ((1, 3, 4, 4), torch.channels_last), ((3, 1, 2, 5), None)]
    for shape, memory_format in shapes:
        if memory_format is not None:
            t = torch.empty(shape).to(memory_format=memory_format)
        else:  # a transposed (permuted, dense) tensor
            t = torch.empty(shape[::-1]).permute(3, 2, 1, 0)
        expected = torch.empty_like(t).normal_(generator=theirs)
        got = _replay_normal(lib, t, ours)
        if not torch.equal(got, expected) or got.stride() != expected.stride():
            return False
        if not torch.equal(theirs.get_state(), ours.get_state()):
            return False
    return True
