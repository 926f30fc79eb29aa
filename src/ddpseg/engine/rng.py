"""Seeding (mmseg's defaults) and capture/restore of every process-global random generator.

mmseg's ``tools/train.py``: without ``--seed`` rank 0 draws a random seed and broadcasts it; every rank then seeds
``random``, ``numpy``, ``torch`` and CUDA with that same seed, unless ``--diff_seed`` adds the rank to it.

RNG states are converted to tensors / plain containers so a checkpoint holding them loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch

from ddpseg.engine.distributed import broadcast_int, get_rank


def init_random_seed(seed: Optional[int] = None) -> int:
    """``seed`` if given, else a random seed drawn on rank 0 and shared with all ranks."""
    if seed is not None:
        return int(seed)
    return broadcast_int(int(np.random.randint(2**31)))


def set_random_seed(seed: int, deterministic: bool = False) -> None:
    """Seed ``random``, ``numpy``, ``torch`` (CPU and all CUDA devices).

    ``deterministic`` also selects deterministic cuDNN kernels and asks PyTorch for deterministic algorithms
    (warning, not failing, where an op has none).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: Optional[int] = None, *, diff_seed: bool = False, deterministic: bool = False) -> int:
    """mmseg's default seeding; returns the shared seed (the one to hand the data loader and store in ``meta``).

    This process is seeded with ``seed + rank`` when ``diff_seed``, else with the shared seed itself.
    """
    shared = init_random_seed(seed)
    set_random_seed(shared + get_rank() if diff_seed else shared, deterministic=deterministic)
    return shared


def get_rng_state() -> dict[str, Any]:
    """States of python ``random``, numpy's global generator, torch CPU and every CUDA device."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`. CUDA states are restored only when the device count matches."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
