"""Small synthetic datasets in the exact Cityscapes and ADE20K layouts, for tests, benchmarks and the
quickstart.

Each image is a few random shapes over a background; every class has its own colour and its own
stripe texture, so a small model can learn the task in a few hundred iterations, and the label map
is exact by construction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from ddpseg.data.cityscapes_labels import TRAIN_ID_TO_ID
from ddpseg.data.datasets import ADE20K_PALETTE, CITYSCAPES_PALETTE
from ddpseg.data.image_io import write_png_atomic

PathLike = Union[str, Path]


def draw_label_map(rng: np.random.Generator, size: tuple[int, int], classes: np.ndarray, background: int,
                   num_shapes: int = 6, ignore_value: int = 255, ignore_prob: float = 0.3) -> np.ndarray:
    """An (H, W) uint8 map: ``background`` with ``num_shapes`` rectangles, ellipses and triangles of
    random ``classes``, and sometimes a small ``ignore_value`` blob."""
    h, w = size
    label = np.full((h, w), background, dtype=np.uint8)
    for _ in range(num_shapes):
        cls = int(rng.choice(classes))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        rx, ry = int(rng.integers(w // 16 + 1, w // 4 + 2)), int(rng.integers(h // 16 + 1, h // 4 + 2))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(label, (cx - rx, cy - ry), (cx + rx, cy + ry), cls, thickness=-1)
        elif kind == 1:
            cv2.ellipse(label, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, cls, thickness=-1)
        else:
            pts = np.array([[cx, cy - ry], [cx - rx, cy + ry], [cx + rx, cy + ry]], dtype=np.int32)
            cv2.fillPoly(label, [pts], cls)
    if rng.random() < ignore_prob:
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.circle(label, (cx, cy), max(2, min(h, w) // 20), ignore_value, thickness=-1)
    return label


def render_image(rng: np.random.Generator, label: np.ndarray, palette_rgb: np.ndarray, noise: float = 6.0) -> np.ndarray:
    """A BGR uint8 image for ``label``: each class in its palette colour with a class-specific stripe
    texture, plus Gaussian noise. Ignored pixels (values past the palette) are mid grey."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w, 3), 128.0, dtype=np.float32)
    for cls in np.unique(label):
        if cls >= len(palette_rgb):
            continue
        mask = label == cls
        angle = math.pi * (cls % 8) / 8
        period = 6.0 + 3.0 * (cls % 5)
        stripes = 20.0 * np.sin(2 * math.pi * (xx[mask] * math.cos(angle) + yy[mask] * math.sin(angle)) / period)
        img[mask] = palette_rgb[cls][::-1].astype(np.float32) + stripes[:, None]
    img += rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _write_image(path: Path, img: np.ndarray, jpeg_quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), img, params):
        raise OSError(f"{path}: could not write image")


def make_synthetic_cityscapes(
    root: PathLike,
    num_train: int = 16,
    num_val: int = 4,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    num_classes: int = 8,
    write_train_ids: bool = True,
    write_label_ids: bool = True,
) -> Path:
    """Write a Cityscapes-layout dataset under ``root`` and return ``root``.

    ``leftImg8bit/{train,val}/<city>/<city>_000000_<i>_leftImg8bit.png`` with
    ``gtFine/.../*_gtFine_labelTrainIds.png`` (train ids 0..num_classes-1, 255) and, as the raw
    download has them, ``*_gtFine_labelIds.png`` (Cityscapes label ids). ``size`` is (H, W); the
    default suits ``configs/quickstart/ddp_convnext_mini_synthetic.py`` (resize towards 256x512, crop
    128x256).
    """
    if not 2 <= num_classes <= 19:
        raise ValueError(f"num_classes must be in 2..19, got {num_classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    classes = np.arange(num_classes)
    for split, count, city in (("train", num_train, "aachen"), ("val", num_val, "frankfurt")):
        for i in range(count):
            stem = f"{city}_000000_{i:06d}"
            label = draw_label_map(rng, size, classes, background=int(rng.choice(classes)))
            _write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", render_image(rng, label, palette))
            gt = root / "gtFine" / split / city
            if write_train_ids:
                write_png_atomic(gt / f"{stem}_gtFine_labelTrainIds.png", label)
            if write_label_ids:
                write_png_atomic(gt / f"{stem}_gtFine_labelIds.png", TRAIN_ID_TO_ID[label])
    return root


def make_synthetic_ade20k(
    root: PathLike,
    num_train: int = 16,
    num_val: int = 4,
    size: tuple[int, int] = (256, 341),
    seed: int = 0,
    num_classes: int = 8,
) -> Path:
    """Write an ADE20K-layout dataset and return its data root, ``root/ADEChallengeData2016``.

    ``images/{training,validation}/ADE_{train,val}_<i>.jpg`` with ``annotations/.../*.png`` holding 0
    ("other") and class ids 1..num_classes, as the benchmark stores them. ``size`` is (H, W).
    """
    if not 2 <= num_classes <= 150:
        raise ValueError(f"num_classes must be in 2..150, got {num_classes}")
    data_root = Path(root) / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    # Stored ids are 1-based; id 0 ("other") gets a colour of its own so it is learnable too.
    palette = np.array([(40, 40, 40)] + list(ADE20K_PALETTE), dtype=np.uint8)
    classes = np.arange(1, num_classes + 1)
    for split, count, prefix in (("training", num_train, "train"), ("validation", num_val, "val")):
        for i in range(count):
            stem = f"ADE_{prefix}_{i + 1:08d}"
            label = draw_label_map(rng, size, np.concatenate([[0], classes]), background=int(rng.choice(classes)),
                                   ignore_value=0, ignore_prob=0.0)
            _write_image(data_root / "images" / split / f"{stem}.jpg", render_image(rng, label, palette))
            write_png_atomic(data_root / "annotations" / split / f"{stem}.png", label)
    return data_root
