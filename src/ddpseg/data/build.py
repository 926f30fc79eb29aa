"""Datasets and loaders from the ``data.train`` / ``data.val`` / ``data.test`` dicts of a config."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ddpseg.data.datasets import DATASETS, CustomDataset
from ddpseg.data.loader import ShardedSampler, make_data_loader, resolve_seed


def _accepted_arguments(cls: type) -> list[str]:
    """Keyword arguments a dataset class takes, following ``**kwargs`` up to its base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def build_dataset(cfg: Mapping, default_args: Optional[Mapping] = None) -> CustomDataset:
    """A dataset from a config dict such as ``cfg.data.train``.

    ``type`` picks CustomDataset, CityscapesDataset or ADE20KDataset; the other keys are its
    arguments (``data_root``, ``img_dir``, ``ann_dir``, ``pipeline``, ``split``, ``img_suffix``,
    ``seg_map_suffix``, ``reduce_zero_label``, ``classes``, ``palette``, ``ignore_index``,
    ``test_mode``, ``label_map``). ``default_args`` fill keys the config leaves out, e.g.
    ``dict(test_mode=True)`` for validation.
    """
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ValueError(f"a dataset config must be a dict with a 'type' key, got {cfg!r}")
    kwargs = {**dict(default_args or {}), **dict(cfg)}
    name = kwargs.pop("type")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset type {name!r}; known types: {', '.join(sorted(DATASETS))}")
    cls = DATASETS[name]
    accepted = _accepted_arguments(cls)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; accepted: {', '.join(accepted)}")
    for key in ("img_dir", "split"):
        if isinstance(kwargs.get(key), (list, tuple)):
            raise ValueError(f"{name}: a list of {key} (concatenated datasets) is not supported")
    if "pipeline" not in kwargs or "img_dir" not in kwargs:
        raise ValueError(f"{name}: 'pipeline' and 'img_dir' are required")
    return cls(**kwargs)


def build_dataloader(
    dataset: Dataset,
    samples_per_gpu: int,
    workers_per_gpu: int,
    *,
    dist: bool = False,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    shuffle: bool = True,
    seed: Optional[int] = None,
    infinite: Optional[bool] = None,
    drop_last: bool = False,
    pin_memory: Optional[bool] = None,
    persistent_workers: bool = True,
) -> DataLoader:
    """A loader over this process's share of ``dataset``.

    Args:
        samples_per_gpu: batch size of this process.
        workers_per_gpu: loader worker processes of this process (0: load in the main process).
        dist: shard by ``rank`` / ``world_size`` (read from ``torch.distributed`` when left out).
        shuffle: reshuffle every epoch (training); off for testing.
        seed: base seed of the shuffling and the per-sample augmentation; needed with ``dist``.
        infinite: never end, moving on epoch after epoch (defaults to ``shuffle``): the training
            loader. A finite loader runs one epoch per iteration over it (the test loader).
        pin_memory: defaults to whether CUDA is available.

    Batches are ``{'img': (B, 3, H, W), 'gt_semantic_seg': (B, 1, H, W), 'img_metas': [dict]}`` for
    training, and per augmentation lists for test pipelines (see :func:`ddpseg.data.loader.collate`).
    Each worker seeds numpy, random and torch from (seed, rank, worker id).
    """
    if samples_per_gpu < 1 or workers_per_gpu < 0:
        raise ValueError(f"samples_per_gpu must be >= 1 and workers_per_gpu >= 0, got {samples_per_gpu}, {workers_per_gpu}")
    if dist:
        if rank is None or world_size is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise ValueError("dist=True needs rank and world_size, or an initialised torch.distributed")
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
    else:
        rank, world_size = 0, 1
    seed = resolve_seed(seed, dist and shuffle)
    sampler = ShardedSampler(
        len(dataset),
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
        infinite=shuffle if infinite is None else infinite,
    )
    return make_data_loader(dataset, sampler, samples_per_gpu, workers_per_gpu, seed=seed, rank=rank,
                            pin_memory=pin_memory, drop_last=drop_last, persistent_workers=persistent_workers)


def build_test_dataloader(dataset: Dataset, workers_per_gpu: int = 1, **kwargs: Any) -> DataLoader:
    """One image per batch, in dataset order, one pass: what testing and validation use.

    Distributed, rank r gets images r, r + world_size, ...; the last ones repeat from the start so
    that every rank has the same count: interleave the ranks' results and cut at ``len(dataset)``.
    """
    return build_dataloader(dataset, 1, workers_per_gpu, shuffle=False, infinite=False, **kwargs)
