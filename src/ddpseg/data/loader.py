"""Sampling, worker seeding and batching.

Training: :class:`ShardedSampler` walks the dataset epoch after epoch (forever when ``infinite``),
each epoch in the order the original's distributed sampler gives (``torch.randperm`` seeded with
``seed + epoch``, padded by repeating its head to a multiple of the world size, every
``world_size``-th index from ``rank`` on). With every index it hands out a sample seed drawn from
``(seed, epoch)`` for that position of the epoch, which fixes the sample's augmentation whatever the
number of workers or which worker loads it.

With ``batch_size`` and ``drop_last`` an epoch ends after its last full batch (mmseg trains with
``drop_last=True``), and ``start_batch`` starts the stream at a given batch: a sampler started at
batch k yields exactly what one started at 0 yields from its k-th batch on. :func:`make_train_loader_fn`
builds on that the training-iterator protocol of :mod:`ddpseg.engine.trainer`.

Test: the same sampler without shuffling, one image per batch at its own size.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

IMG_PAD_VALUE = 0
SEG_PAD_VALUE = 255


class ShardedSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank's share of each epoch.

    Args:
        size: dataset length.
        rank, world_size: this process's place among the data-parallel processes.
        shuffle: a new permutation each epoch; otherwise 0, 1, 2, ...
        seed: the run's base seed; must be the same on every rank.
        infinite: start the next epoch when one ends, forever.
        batch_size: samples per batch of this rank (only needed with ``drop_last`` or ``start_batch``).
        drop_last: end each epoch after its last full batch, as a loader with ``drop_last=True`` does.
        start_batch: skip this rank's first ``start_batch`` batches (resuming at that iteration).
    """

    def __init__(
        self,
        size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        infinite: bool = True,
        batch_size: int = 1,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1 or start_batch < 0:
            raise ValueError(f"batch_size must be >= 1 and start_batch >= 0, got {batch_size}, {start_batch}")
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.infinite = infinite
        self.epoch = 0
        self.num_samples = -(-size // world_size)  # per rank and epoch
        self.total_size = self.num_samples * world_size
        self.batch_size = batch_size
        self.start_batch = start_batch
        # samples this rank takes from each epoch
        self.epoch_length = self.num_samples - self.num_samples % batch_size if drop_last else self.num_samples
        if self.epoch_length == 0:
            raise ValueError(
                f"{size} samples over {world_size} process(es) give each fewer than one batch of {batch_size}; "
                "with drop_last every batch would be dropped (use a smaller batch or more data)"
            )

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration starts from (for resuming)."""
        self.epoch = epoch

    def epoch_indices(self, epoch: int) -> tuple[list[int], list[int]]:
        """This rank's (indices, sample seeds) for ``epoch``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        while len(order) < self.total_size:  # a tiny dataset may need repeating more than once
            order += order[: self.total_size - len(order)]
        seeds = np.random.default_rng([self.seed, epoch]).integers(0, 2**63 - 1, size=self.total_size).tolist()
        return order[self.rank :: self.world_size], seeds[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skipped_epochs, offset = divmod(self.start_batch * self.batch_size, self.epoch_length)
        epoch = self.epoch + skipped_epochs
        while True:
            indices, seeds = self.epoch_indices(epoch)
            yield from zip(indices[offset : self.epoch_length], seeds[offset : self.epoch_length])
            offset = 0
            epoch += 1
            if not self.infinite:
                return

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite sampler has no length; use num_samples for one epoch")
        return max(0, self.epoch_length - self.start_batch * self.batch_size)


def make_train_loader_fn(
    dataset: Dataset,
    samples_per_gpu: int,
    workers_per_gpu: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    pin_memory: Optional[bool] = None,
) -> Callable[[int, int], Iterator[dict[str, Any]]]:
    """``loader_fn(start_iter, seed)``: this rank's training batches for iterations ``start_iter``,
    ``start_iter + 1``, ... forever, the protocol :func:`ddpseg.engine.trainer.train` expects.

    Batch k on rank r depends only on (seed, k, r, world_size): the epoch order comes from
    ``seed + epoch`` and each sample's augmentation from its own seed, whatever ``start_iter`` or the
    number of workers. Epochs end at their last full batch (``drop_last``), as mmseg's training loader.
    """
    if samples_per_gpu < 1 or workers_per_gpu < 0:
        raise ValueError(
            f"samples_per_gpu must be >= 1 and workers_per_gpu >= 0, got {samples_per_gpu}, {workers_per_gpu}"
        )

    def loader_fn(start_iter: int, seed: int) -> Iterator[dict[str, Any]]:
        sampler = ShardedSampler(
            len(dataset), rank=rank, world_size=world_size, shuffle=True, seed=seed, infinite=True,
            batch_size=samples_per_gpu, drop_last=drop_last, start_batch=start_iter,
        )
        return iter(make_data_loader(dataset, sampler, samples_per_gpu, workers_per_gpu, seed=seed, rank=rank,
                                     pin_memory=pin_memory))

    return loader_fn


def make_data_loader(
    dataset: Dataset,
    sampler: "ShardedSampler",
    samples_per_gpu: int,
    workers_per_gpu: int,
    *,
    seed: int,
    rank: int,
    pin_memory: Optional[bool] = None,
    drop_last: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """The DataLoader every ddpseg loader is: our sampler, ``collate``, seeded workers, pinned memory on CUDA."""
    return DataLoader(
        dataset,
        batch_size=samples_per_gpu,
        sampler=sampler,
        num_workers=workers_per_gpu,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank) if workers_per_gpu > 0 else None,
        persistent_workers=persistent_workers and workers_per_gpu > 0,
    )


def seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    """Seed one loader worker's global generators (numpy, random, torch) from (seed, rank, worker id),
    for any code that draws from them; our transforms use the per-sample generator instead. Also keeps
    OpenCV single-threaded inside workers, which already run in parallel."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) ^ int(state[1]))
    cv2.setNumThreads(0)


def _pad_to(t: torch.Tensor, h: int, w: int, value: float) -> torch.Tensor:
    return F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]), value=value) if t.shape[-2:] != (h, w) else t


def _stack(tensors: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """Stack (C, H, W) tensors, padding smaller ones at the bottom/right to the largest size."""
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    return torch.stack([_pad_to(t, h, w, value) for t in tensors])


def collate(samples: Sequence[dict]) -> dict[str, Any]:
    """Batch pipeline outputs.

    Training samples ``{'img': (3, H, W), 'gt_semantic_seg': (1, H, W), 'img_metas': dict}`` become
    ``{'img': (B, 3, H, W) float, 'gt_semantic_seg': (B, 1, H, W) int64, 'img_metas': [dict] * B}``.
    Test samples from MultiScaleFlipAug hold a list per key, one entry per augmentation; they become
    ``{'img': [(B, 3, H_a, W_a) per aug], 'img_metas': [[dict] * B per aug]}``.
    Images of different sizes are padded at the bottom/right to the largest, like the original's
    collate, with 0 for images and 255 (ignore) for labels, where the original's 0 would read as class
    0; the training pipeline's Pad makes them equal anyway.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], list):  # one entry per test-time augmentation
            batch[key] = [_collate_values(key, [v[a] for v in values]) for a in range(len(values[0]))]
        else:
            batch[key] = _collate_values(key, values)
    return batch


def _collate_values(key: str, values: list) -> Any:
    if isinstance(values[0], torch.Tensor):
        return _stack(values, SEG_PAD_VALUE if key == "gt_semantic_seg" else IMG_PAD_VALUE)
    return values


def resolve_seed(seed: Optional[int], dist: bool) -> int:
    """The run's base seed: as given, or drawn from numpy's global state (which the caller may have
    seeded). Distributed runs must pass one, the same on every rank."""
    if seed is not None:
        return int(seed)
    if dist:
        raise ValueError("distributed loading needs an explicit seed, the same on every rank (ranks must shuffle alike)")
    return int(np.random.randint(2**31))
