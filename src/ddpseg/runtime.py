"""Runtime knobs: CPU allocator tuning, autocast contexts, opt-in encoder speed-ups (channels-last, compile).

Allocator:

PyTorch allocates CPU tensors with ``malloc``. glibc serves allocations above its mmap threshold
(128 KiB–32 MiB, adaptive) with fresh ``mmap`` pages and unmaps them on free, so every large tensor a
step creates page-faults its memory in again. A decoder step makes hundreds of such tensors: measured
here, a ``ddp_convnext_t`` training step took 28 s with the default and 16 s with large tensors kept on
the heap; 3-step inference went from 9.3 s to 8.4 s (2 cores, 512×1024). ``tune_cpu_allocator`` raises
the mmap and trim thresholds so freed memory is reused instead. The cost: the process keeps up to the
trim threshold of free memory instead of returning it to the OS at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import argparse
import ctypes.util
import os
import platform
from dataclasses import dataclass
from typing import Any, ContextManager, Mapping, Optional, Union

import torch

from .config import ConfigError

__all__ = [
    "tune_cpu_allocator", "autocast_for", "AMP_CHOICES", "speed_up_encoder", "Speedups", "speedup_settings",
    "DeviceError", "parse_device", "device_argument", "default_device",
]

AMP_CHOICES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device named by the user (``--device``, ``init_model(device=...)``) is not a device or is not here."""


_EXPECTED_DEVICES = "expected cpu, cuda or cuda:N"


def parse_device(device: Union[str, torch.device], option: Optional[str] = "--device") -> torch.device:
    """The :class:`torch.device` a user's device string names, checked to exist on this machine.

    ``option`` is how the value is named in errors (``--device`` for the commands, ``device`` for the API,
    ``None`` for the bare value). Raises :class:`DeviceError` (a ``ValueError``, so the commands print it as one
    line) for a string that names no device, CUDA where it is not available, or a GPU index this machine lacks.
    """
    text = str(device).strip() if not isinstance(device, torch.device) else str(device)
    shown = text or "''"
    where = f"{option} {shown}" if option else shown
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"{where}: not a device; {_EXPECTED_DEVICES}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU found"
            use = "use cpu" if not option else f"use {option} cpu" if option.startswith("-") else f"use {option}='cpu'"
            raise DeviceError(f"{where}: CUDA is not available here (torch {torch.__version__}, {build}); {use}")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 ... cuda:{count - 1}"
            raise DeviceError(f"{where}: there is no GPU {parsed.index} here; this machine has {count} ({have})")
        return parsed
    backend = getattr(torch, parsed.type, None)  # e.g. torch.mps, torch.xpu
    available = getattr(backend, "is_available", None)
    if callable(available) and available():
        return parsed
    raise DeviceError(f"{where}: {parsed.type} is not available here; {_EXPECTED_DEVICES}")


def device_argument(text: str) -> torch.device:
    """An argparse ``type=`` for a device option: :func:`parse_device`, its error shown as a usage error (argparse
    names the option)."""
    try:
        return parse_device(text, option=None)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def default_device(gpu_id: int = 0) -> torch.device:
    """``cuda:<gpu_id>`` when CUDA is available (checked to exist, errors naming ``--gpu-id``), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if not 0 <= gpu_id < count:
        have = "0" if count == 1 else f"0 ... {count - 1}"
        raise DeviceError(f"--gpu-id {gpu_id}: there is no GPU {gpu_id} here; this machine has {count} ({have})")
    return torch.device("cuda", gpu_id)


def autocast_for(device: str, amp: Optional[str]) -> ContextManager:
    """``torch.autocast`` on ``device``'s type for ``amp`` in ``AMP_CHOICES``; a no-op context for ``None``."""
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {sorted(AMP_CHOICES)}, got {amp!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_CHOICES[amp])


@dataclass(frozen=True)
class Speedups:
    """Opt-in execution settings: autocast dtype (``None`` = float32), NHWC encoder, compiled encoder, and
    TF32 on CUDA (``None``: PyTorch's defaults, as the original ran; see :func:`apply_tf32`)."""

    amp: Optional[str] = None
    channels_last: bool = False
    compile: bool = False
    tf32: Optional[bool] = None


SPEEDUP_KEYS = ("amp", "channels_last", "compile", "tf32")


def apply_tf32(tf32: Optional[bool], device: Union[str, torch.device]) -> None:
    """Set TF32 for CUDA float32 matrix products and cuDNN convolutions, process-wide: ``True`` both on,
    ``False`` both off, ``None`` left as they are (PyTorch's defaults: convolutions in TF32 on Ampere and
    later, matrix products in float32, as in the original's torch 1.12). Nothing changes for a CPU device."""
    if tf32 is None or torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def describe_tf32() -> str:
    """The current CUDA TF32 settings, for reports."""
    on = {True: "TF32", False: "float32"}
    return (f"matrix products {on[torch.backends.cuda.matmul.allow_tf32]}, "
            f"cuDNN convolutions {on[torch.backends.cudnn.allow_tf32]}")


def speedup_settings(
    cfg: Optional[Mapping[str, Any]],
    *,
    amp: Optional[str] = None,
    channels_last: bool = False,
    compile: bool = False,
    tf32: Optional[bool] = None,
) -> Speedups:
    """The config's ``speedups`` section, with command-line flags on top.

    ``speedups = dict(amp=None | 'bf16' | 'fp16', channels_last=False, compile=False, tf32=None | True | False)``
    at a config's top level applies to training, ``test``, ``demo`` and ``benchmark``; a flag that is given
    (``--amp``, ``--channels-last``, ``--compile``, ``--tf32`` / ``--no-tf32``) wins over the config. A config's legacy ``fp16`` section (mmseg's
    mixed-precision switch; any ``fp16`` that is not None, ``fp16 = dict()`` too) means ``amp='fp16'`` when neither
    sets ``amp``.
    """
    section = (cfg or {}).get("speedups") or {}
    where = getattr(cfg, "filename", None) or "<config>"
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: speedups must be a dict with keys {list(SPEEDUP_KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(SPEEDUP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in speedups; expected some of {list(SPEEDUP_KEYS)}")
    for key in ("channels_last", "compile"):
        if not isinstance(section.get(key, False), bool):
            raise ConfigError(f"{where}: speedups.{key} must be True or False, got {section[key]!r}")
    cfg_tf32 = section.get("tf32")
    if cfg_tf32 is not None and not isinstance(cfg_tf32, bool):
        raise ConfigError(f"{where}: speedups.tf32 must be None, True or False, got {cfg_tf32!r}")
    cfg_amp = section.get("amp")
    if cfg_amp is not None and cfg_amp not in AMP_CHOICES:
        raise ConfigError(f"{where}: speedups.amp must be None or one of {sorted(AMP_CHOICES)}, got {cfg_amp!r}")
    if amp is not None and amp not in AMP_CHOICES:
        raise ValueError(f"amp must be None or one of {sorted(AMP_CHOICES)}, got {amp!r}")
    if amp is None:
        # present, even empty (mmseg's fp16 configs carry ``fp16 = dict()``): the original's test.py then ran fp16
        amp = cfg_amp if cfg_amp is not None else ("fp16" if (cfg or {}).get("fp16") is not None else None)
    return Speedups(
        amp=amp,
        channels_last=bool(channels_last or section.get("channels_last", False)),
        compile=bool(compile or section.get("compile", False)),
        tf32=cfg_tf32 if tf32 is None else bool(tf32),
    )


def speed_up_encoder(model: torch.nn.Module, *, channels_last: bool = False, compile: bool = False) -> torch.nn.Module:
    """Opt-in speed-ups for a DDP model's image encoder (backbone + neck), in place; returns the model.

    ``channels_last``: backbone and neck weights, and the images ``extract_feat`` receives, in NHWC
    layout (oneDNN's preferred one for the depthwise and 3×3 convolutions). ``compile``: the backbone's
    and the neck's ``forward`` through ``torch.compile`` (needs a C++ compiler on the CPU; the first
    image of each size pays the compilation). Both leave parameter names, so checkpoints load and
    save as before; outputs equal float32 eager up to rounding (tested). The decoder keeps its own
    chunked execution.
    """
    for name in ("backbone", "neck"):
        if not isinstance(getattr(model, name, None), torch.nn.Module):
            raise TypeError(f"speed_up_encoder needs a model with .{name} (a DDP segmentor), got {type(model).__name__}")
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
        model.neck.to(memory_format=torch.channels_last)
        model.channels_last = True
    if compile:
        model.backbone.forward = torch.compile(model.backbone.forward)
        model.neck.forward = torch.compile(model.neck.forward)
    return model


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB
_done = False


def tune_cpu_allocator() -> bool:
    """Keep large CPU tensors on glibc's heap (Linux only; idempotent). Returns whether it applied.

    Set ``DDPSEG_NO_ALLOCATOR_TUNING=1`` to leave the allocator alone.
    """
    global _done
    if _done:
        return True
    if os.environ.get("DDPSEG_NO_ALLOCATOR_TUNING") == "1" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _done
