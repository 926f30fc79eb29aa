"""Process-group set-up from torchrun's environment, rank helpers, and norm-layer preparation.

Runs unchanged without torchrun (one process, no process group). Under ``torchrun`` (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) :func:`init_distributed` joins the group: NCCL on CUDA,
gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def resolve_device(device: Union[str, torch.device], local_rank: int = 0) -> torch.device:
    """``'cuda'`` becomes ``cuda:<local_rank % visible GPUs>`` (as mmcv's launcher: a process that sees one GPU, e.g.
    through a per-process ``CUDA_VISIBLE_DEVICES``, takes ``cuda:0``); a string that names no device, a CUDA device
    without CUDA or a GPU index this machine lacks is a :class:`ddpseg.runtime.DeviceError` (see
    :func:`ddpseg.runtime.parse_device`)."""
    from ..runtime import parse_device

    device = parse_device(device, option="device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(
    device: Union[str, torch.device, None] = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Join the torchrun process group if the environment names one; idempotent.

    ``device`` defaults to CUDA when available. Returns this process's rank, local rank, world size and device.
    """
    from ..runtime import parse_device

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    requested = parse_device(device, option="device")
    device = resolve_device(requested, local_rank)
    if device.type == "cuda":
        _check_one_gpu_per_process(world_size, requested.index, local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank=get_rank(), local_rank=local_rank, world_size=get_world_size(), device=device)


def _check_one_gpu_per_process(world_size: int, index: Optional[int] = None, local_rank: int = 0) -> None:
    """NCCL refuses two processes on one GPU ("Duplicate GPU detected", at the first collective); torchrun's
    ``LOCAL_WORLD_SIZE`` (processes on this machine) above the visible GPU count, or a GPU ``index`` named for
    every process (``--device cuda:N``) other than this process's own ``cuda:LOCAL_RANK``, is said up front."""
    from ..runtime import DeviceError

    local_world_size, count = _env_int("LOCAL_WORLD_SIZE", 1), torch.cuda.device_count()
    if world_size > 1 and local_world_size > count:
        raise DeviceError(
            f"{local_world_size} processes on this machine (LOCAL_WORLD_SIZE) but {count} visible CUDA device(s): "
            f"NCCL needs a GPU of its own for each process; start at most {count} per machine, or run on the CPU "
            f"(gloo) with --device cpu"
        )
    if world_size > 1 and local_world_size > 1 and index is not None and index != local_rank % count:
        raise DeviceError(
            f"device cuda:{index} with {local_world_size} processes on this machine (LOCAL_WORLD_SIZE): every "
            f"process would use GPU {index}, but NCCL needs a GPU of its own for each; pass --device cuda (or "
            f"leave it out), and each process takes cuda:LOCAL_RANK (this one, local rank {local_rank}: "
            f"cuda:{local_rank % count})"
        )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int) -> NoReturn:
    """End a torchrun worker whose work is written and whose process group is destroyed, skipping interpreter teardown.

    In 2 of ~25 two-process CPU (gloo) test runs, rank 0 aborted at interpreter exit after a complete run
    ("terminate called without an active exception", from torch's C++ teardown, after destroy_process_group), and
    torchrun then reported the whole job as failed. Nothing is left to do here, so the process flushes and exits.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: Mapping[str, Union[torch.Tensor, float]]) -> dict[str, float]:
    """Mean of each scalar over all ranks (identity in one process), read back with a single device sync.

    Every rank must pass the same keys in the same order; the count is checked first so a mismatch fails instead
    of hanging.
    """
    keys = list(values)
    if not keys:
        return {}
    scalars = [v.detach().float().mean() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
               for v in values.values()]
    device = _collective_device() if is_distributed() else scalars[0].device
    stacked = torch.stack([s.to(device, torch.float64) for s in scalars])
    if is_distributed():
        count = torch.tensor([len(keys)], dtype=torch.int64, device=device)
        dist.all_reduce(count)
        if int(count) != len(keys) * get_world_size():
            raise RuntimeError(f"rank {get_rank()}: logged values differ across ranks; this rank has keys {keys}")
        dist.all_reduce(stacked)
        stacked /= get_world_size()
    return dict(zip(keys, stacked.tolist()))


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def all_ranks_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank; lets all ranks stop together when one of them failed."""
    if not is_distributed():
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(flag)
    return int(flag) == 0


def broadcast_int(value: int, src: int = 0) -> int:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.broadcast(tensor, src=src)
    return int(tensor)


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process). Pickled only in transit, never on disk."""
    if not is_distributed():
        return [obj]
    gathered: list[object] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s norm-layer running statistics to all ranks (DDP runs with ``broadcast_buffers=False``,
    so plain BatchNorm stats drift apart between ranks; evaluation must see one model)."""
    if not is_distributed():
        return
    for layer in module.modules():
        if isinstance(layer, _BatchNorm):
            for buffer in layer.buffers(recurse=False):
                dist.broadcast(buffer.data, src=src)


class _BatchNormXd(_BatchNorm):
    """BatchNorm for any input rank, the shape SyncBatchNorm accepts; used when reverting SyncBatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - name fixed by the base class
        return None


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` by an equivalent per-process BatchNorm sharing its parameters/buffers."""
    if isinstance(module, nn.SyncBatchNorm):
        reverted = _BatchNormXd(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            reverted.weight = module.weight
            reverted.bias = module.bias
        reverted.running_mean = module.running_mean
        reverted.running_var = module.running_var
        reverted.num_batches_tracked = module.num_batches_tracked
        reverted.training = module.training
        return reverted
    for name, child in module.named_children():
        new_child = revert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def prepare_batchnorm(model: nn.Module, *, distributed: bool, device: torch.device) -> nn.Module:
    """SyncBatchNorm for multi-process training on an accelerator, per-process BatchNorm otherwise.

    PyTorch's SyncBatchNorm refuses CPU tensors once a process group exists, so CPU (gloo) runs keep per-rank
    statistics — mmseg likewise reverts SyncBN when not distributed.
    """
    has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    if not has_bn:
        return model
    if distributed and device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return revert_sync_batchnorm(model)


def local_rank_device_ids(device: torch.device) -> Optional[list[int]]:
    """``device_ids`` for DistributedDataParallel: the one CUDA device, or None on CPU."""
    return [device.index] if device.type == "cuda" else None
