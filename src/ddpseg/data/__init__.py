"""Datasets, transforms and loaders, matching the original's MMSegmentation 0.x data pipeline.

Typical use, from a config's ``data`` section::

    train_set = build_dataset(cfg.data.train)
    train_loader = build_dataloader(train_set, cfg.data.samples_per_gpu, cfg.data.workers_per_gpu, seed=0)
    batch = next(iter(train_loader))   # {'img', 'gt_semantic_seg', 'img_metas'}
"""

from ddpseg.data.build import build_dataloader, build_dataset, build_test_dataloader
from ddpseg.data.datasets import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    ADE20KDataset,
    CityscapesDataset,
    CustomDataset,
)
from ddpseg.data.image_io import DataError
from ddpseg.data.loader import ShardedSampler, collate
from ddpseg.data.transforms import Compose, build_pipeline

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "ADE20KDataset",
    "CityscapesDataset",
    "Compose",
    "CustomDataset",
    "DataError",
    "ShardedSampler",
    "build_dataloader",
    "build_dataset",
    "build_pipeline",
    "build_test_dataloader",
    "collate",
]
