"""The last pipeline steps: arrays to tensors, and the ``{'img', 'gt_semantic_seg', 'img_metas'}``
sample the loader collates."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ddpseg.data.image_io import DataError

DEFAULT_META_KEYS = (
    "filename",
    "ori_filename",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "img_norm_cfg",
)


def _image_tensor(img: np.ndarray) -> torch.Tensor:
    if img.ndim < 3:
        img = img[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class DefaultFormatBundle:
    """``img`` (H, W, C) -> tensor (C, H, W); ``gt_semantic_seg`` (H, W) -> int64 tensor (1, H, W)."""

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        if "img" in results:
            results["img"] = _image_tensor(results["img"])
        if "gt_semantic_seg" in results:
            results["gt_semantic_seg"] = torch.from_numpy(results["gt_semantic_seg"][None].astype(np.int64))
        return results

    def __repr__(self) -> str:
        return "DefaultFormatBundle()"


class ImageToTensor:
    """Each of ``keys``: (H, W, C) array -> (C, H, W) tensor."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        for key in self.keys:
            results[key] = _image_tensor(results[key])
        return results

    def __repr__(self) -> str:
        return f"ImageToTensor(keys={self.keys})"


class ToTensor:
    """Each of ``keys``: array or number -> tensor, shape kept."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        for key in self.keys:
            value = results[key]
            if isinstance(value, np.ndarray):
                results[key] = torch.from_numpy(value)
            elif not isinstance(value, torch.Tensor):
                results[key] = torch.as_tensor(value)
        return results

    def __repr__(self) -> str:
        return f"ToTensor(keys={self.keys})"


class Collect:
    """Keep ``keys`` and gather ``meta_keys`` into ``img_metas``; every other key is dropped."""

    def __init__(self, keys: Sequence[str], meta_keys: Sequence[str] = DEFAULT_META_KEYS) -> None:
        self.keys = list(keys)
        self.meta_keys = list(meta_keys)

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        missing = [k for k in self.keys + self.meta_keys if k not in results]
        if missing:
            raise DataError(
                f"{results.get('filename', '<no file>')}: Collect wants {missing} but the pipeline before it "
                f"produced only {sorted(results)}"
            )
        data = {"img_metas": {k: results[k] for k in self.meta_keys}}
        data.update({k: results[k] for k in self.keys})
        return data

    def __repr__(self) -> str:
        return f"Collect(keys={self.keys}, meta_keys={self.meta_keys})"
