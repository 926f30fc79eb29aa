"""Training samples with their labels drawn over them, as the model is fed them (before Normalize)."""

from __future__ import annotations

import copy
import os.path as osp
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch

from ddpseg.data.build import build_dataset

DEFAULT_SKIP_TYPES = ("DefaultFormatBundle", "Normalize", "Collect")


def overlay_label(img_bgr: np.ndarray, label: np.ndarray, palette_rgb: Sequence[Sequence[int]], opacity: float = 0.5) -> np.ndarray:
    """Blend the palette colour of each pixel's class over a BGR uint8 image. Pixels outside the
    palette (ignore, padding) blend with black, so padding and ignored areas show as darker."""
    if not 0 < opacity <= 1:
        raise ValueError(f"opacity must be in (0, 1], got {opacity}")
    if img_bgr.shape[:2] != label.shape:
        raise ValueError(f"image {img_bgr.shape[:2]} and label {label.shape} differ in size")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette_rgb)] = np.asarray(palette_rgb, dtype=np.uint8)[:, ::-1]
    colour = table[label]
    return (img_bgr * (1 - opacity) + colour * opacity).astype(np.uint8)


def _as_bgr_uint8(img: Any, norm_cfg: Optional[Mapping]) -> np.ndarray:
    """The sample's image back as BGR uint8, undoing formatting/normalisation if they were kept."""
    if isinstance(img, torch.Tensor):
        img = img.numpy().transpose(1, 2, 0)
    if img.dtype != np.uint8:
        if norm_cfg is not None:
            img = img * np.asarray(norm_cfg["std"]) + np.asarray(norm_cfg["mean"])
            if norm_cfg.get("to_rgb"):
                img = img[..., ::-1]
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img)


def _train_dataset_cfg(train_cfg: Mapping) -> dict:
    cfg = copy.deepcopy(dict(train_cfg))
    while "dataset" in cfg and "pipeline" not in cfg:  # wrappers such as RepeatDataset
        cfg = copy.deepcopy(dict(cfg["dataset"]))
    return cfg


def browse_dataset(
    train_cfg: Mapping,
    out_dir: str,
    *,
    num_samples: Optional[int] = 20,
    skip_types: Sequence[str] = DEFAULT_SKIP_TYPES,
    show_origin: bool = False,
    opacity: float = 0.5,
    seed: int = 0,
) -> list[str]:
    """Write ``out_dir/<image name>.png`` for the first ``num_samples`` samples (all when None) of the
    dataset ``train_cfg`` (a config's ``data.train``) after its pipeline without ``skip_types``, or
    with only the loading steps when ``show_origin``. Returns the written paths."""
    cfg = _train_dataset_cfg(train_cfg)
    pipeline = list(cfg.get("pipeline", []))
    if show_origin:
        cfg["pipeline"] = [t for t in pipeline if t.get("type", "").startswith("Load")]
    else:
        cfg["pipeline"] = [t for t in pipeline if t.get("type") not in set(skip_types)]
    dataset = build_dataset(cfg)
    count = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=count).tolist()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for idx, sample_seed in zip(range(count), seeds):
        sample = dataset[(idx, sample_seed)]
        metas = sample.get("img_metas", sample)
        img = _as_bgr_uint8(sample["img"], metas.get("img_norm_cfg"))
        label = sample["gt_semantic_seg"]
        label = (label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label)).reshape(img.shape[:2])
        path = osp.join(out_dir, osp.splitext(osp.basename(metas["ori_filename"]))[0] + ".png")
        if not cv2.imwrite(path, overlay_label(img, label.astype(np.uint8), dataset.PALETTE, opacity)):
            raise OSError(f"{path}: could not write image")
        written.append(path)
    return written
