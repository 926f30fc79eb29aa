"""Tiny stand-ins for the engine tests: a segmentor with the real model's training interface and a data stream
that follows the trainer's data-iterator protocol (batch of iteration k on rank r = f(seed, k, r, world size))."""

from __future__ import annotations

import copy
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

NUM_CLASSES = 3
IMAGE_SIZE = 8


class ToySegmentor(nn.Module):
    """Conv stem + norm + depth-wise ``pos_block`` + dropout + decode/auxiliary heads; ``unused`` never takes part
    (exercises ``find_unused_parameters``)."""

    def __init__(self, width: int = 8, dropout: float = 0.0, batchnorm: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width) if batchnorm else nn.GroupNorm(2, width)
        self.pos_block = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.drop = nn.Dropout(dropout)
        self.decode_head = nn.Conv2d(width, NUM_CLASSES, 1)
        self.auxiliary_head = nn.Conv2d(width, NUM_CLASSES, 1)
        self.unused = nn.Linear(2, 2)

    def forward_train(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.norm(self.stem(img)))
        x = self.drop(x + self.pos_block(x))
        target = gt_semantic_seg.squeeze(1)
        losses = {}
        for prefix, head, weight in (("decode", self.decode_head, 1.0), ("aux", self.auxiliary_head, 0.4)):
            logits = head(x)
            losses[f"{prefix}.loss_ce"] = weight * F.cross_entropy(logits, target, ignore_index=255)
            with torch.no_grad():
                valid = target != 255
                losses[f"{prefix}.acc_seg"] = (logits.argmax(1)[valid] == target[valid]).float().mean() * 100
        return losses


def toy_config(max_iters: int = 8, **sections: Any) -> dict[str, Any]:
    """The DDP configs' training sections at toy scale; ``sections`` replace whole sections."""
    cfg: dict[str, Any] = dict(
        model=dict(type="ToySegmentor", width=8, dropout=0.2),
        optimizer=dict(
            type="AdamW",
            lr=1e-2,
            betas=(0.9, 0.999),
            weight_decay=0.01,
            paramwise_cfg=dict(
                custom_keys={"pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0), "head": dict(lr_mult=1.0)}
            ),
        ),
        optimizer_config=dict(grad_clip=dict(max_norm=1.0, norm_type=2)),
        lr_config=dict(policy="poly", warmup="linear", warmup_iters=3, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                       by_epoch=False),
        runner=dict(type="IterBasedRunner", max_iters=max_iters),
        checkpoint_config=dict(by_epoch=False, interval=4),
        evaluation=dict(interval=4, metric="mIoU", save_best="mIoU"),
        log_config=dict(interval=2, hooks=[dict(type="TextLoggerHook", by_epoch=False)]),
        find_unused_parameters=True,
    )
    cfg.update(copy.deepcopy(sections))
    return cfg


def build_toy(cfg: dict[str, Any], seed: int = 0) -> ToySegmentor:
    """Seeded construction, as the training entry point does before calling ``train``."""
    torch.manual_seed(seed)
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "type"}
    return ToySegmentor(**model_cfg)


class _ToyImages(Dataset):
    """16 fixed random images/labels; ``__getitem__((index, sample_seed))`` augments with its own generator."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.images = torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (16, 1, IMAGE_SIZE, IMAGE_SIZE), generator=g)
        self.labels[:, :, 0, 0] = 255  # some ignored pixels
        self.nan_at_index: Optional[int] = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = item
        g = torch.Generator().manual_seed(sample_seed)
        img, label = self.images[index], self.labels[index]
        if torch.rand(1, generator=g).item() < 0.5:  # random horizontal flip
            img, label = img.flip(-1), label.flip(-1)
        img = img + 0.1 * torch.randn(img.shape, generator=g)  # random photometric noise
        return {"img": img, "gt_semantic_seg": label, "img_metas": {"index": index}}


class _PositionSampler(Sampler):
    """Global sample position p = (iteration * world_size + rank) * batch + j -> (index, seed): epoch-wise
    permutations seeded by ``seed + epoch`` and a per-position augmentation seed; starts at ``start_iter``."""

    def __init__(self, size: int, seed: int, start_iter: int, batch: int, rank: int, world_size: int) -> None:
        self.size, self.seed, self.start_iter = size, seed, start_iter
        self.batch, self.rank, self.world_size = batch, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        iteration = self.start_iter
        while True:
            for j in range(self.batch):
                position = (iteration * self.world_size + self.rank) * self.batch + j
                epoch, offset = divmod(position, self.size)
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
                yield int(order[offset]), self.seed * 1_000_003 + position
            iteration += 1


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "img": torch.stack([s["img"] for s in samples]),
        "gt_semantic_seg": torch.stack([s["gt_semantic_seg"] for s in samples]),
        "img_metas": [s["img_metas"] for s in samples],
    }


class SimulatedKill(Exception):
    """Raised by the toy stream in place of a process being killed."""


def make_loader_fn(
    batch: int = 2,
    rank: int = 0,
    world_size: int = 1,
    kill_at: Optional[int] = None,
    nan_at: Optional[int] = None,
):
    """``loader_fn(start_iter, seed)``: a DataLoader over the toy images; ``kill_at`` raises when the batch of that
    iteration is requested, ``nan_at`` poisons that iteration's images with NaN."""

    def loader_fn(start_iter: int, seed: int) -> Iterator[dict[str, Any]]:
        sampler = _PositionSampler(16, seed, start_iter, batch, rank, world_size)
        batches = iter(DataLoader(_ToyImages(), batch_size=batch, sampler=sampler, collate_fn=_collate))

        def stream() -> Iterator[dict[str, Any]]:
            for iteration, data in enumerate(batches, start=start_iter):
                if iteration == kill_at:
                    raise SimulatedKill(f"killed before iteration {iteration}")
                if iteration == nan_at:
                    data["img"] = torch.full_like(data["img"], float("nan"))
                yield data

        return stream()

    return loader_fn


def scores_eval_fn(scores: dict[int, float]):
    """An eval_fn returning ``scores[iteration]`` as mIoU; it also draws random numbers (as DDP sampling does)."""

    def eval_fn(model: nn.Module, iteration: int) -> dict[str, float]:
        assert not model.training
        torch.randn(100)
        return {"mIoU": scores[iteration], "aAcc": 0.5}

    return eval_fn
