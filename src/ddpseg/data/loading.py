"""The two loading transforms: an image file into ``results['img']``, a label map into
``results['gt_semantic_seg']``.

They read the keys a dataset puts into ``results`` (``img_info``, ``ann_info``, ``img_prefix``,
``seg_prefix``, and optionally ``label_map``, ``num_classes``, ``ignore_index``) and fill the keys the
later transforms and the model read (``filename``, ``ori_filename``, ``img``, ``img_shape``,
``ori_shape``, ``pad_shape``, ``scale_factor``, ``img_norm_cfg``, ``gt_semantic_seg``, ``seg_fields``).
"""

from __future__ import annotations

import os.path as osp
from typing import Mapping, Optional

import numpy as np

from ddpseg.data.image_io import DataError, read_image, read_label


def _check_file_client(owner: str, file_client_args: Optional[Mapping]) -> None:
    if file_client_args is not None and dict(file_client_args) != {"backend": "disk"}:
        raise ValueError(f"{owner}: only local files are supported (file_client_args={dict(file_client_args)!r})")


def _join(prefix: Optional[str], name: str) -> str:
    return osp.join(prefix, name) if prefix is not None else name


class LoadImageFromFile:
    """Read ``img_prefix/img_info['filename']``; colour images come back in BGR order (see Normalize's
    ``to_rgb``)."""

    def __init__(
        self,
        to_float32: bool = False,
        color_type: str = "color",
        file_client_args: Optional[Mapping] = None,
        imdecode_backend: str = "cv2",
    ) -> None:
        _check_file_client("LoadImageFromFile", file_client_args)
        self.to_float32 = to_float32
        self.color_type = color_type
        self.imdecode_backend = imdecode_backend

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        filename = _join(results.get("img_prefix"), results["img_info"]["filename"])
        img = read_image(filename, flag=self.color_type, backend=self.imdecode_backend)
        if self.to_float32:
            img = img.astype(np.float32)
        channels = 1 if img.ndim < 3 else img.shape[2]
        results.update(
            filename=filename,
            ori_filename=results["img_info"]["filename"],
            img=img,
            img_shape=img.shape,
            ori_shape=img.shape,
            pad_shape=img.shape,
            scale_factor=1.0,
            img_norm_cfg=dict(
                mean=np.zeros(channels, dtype=np.float32), std=np.ones(channels, dtype=np.float32), to_rgb=False
            ),
        )
        return results

    def __repr__(self) -> str:
        return f"LoadImageFromFile(to_float32={self.to_float32}, color_type={self.color_type!r})"


def label_lookup_table(label_map: Optional[Mapping[int, int]], reduce_zero_label: bool) -> Optional[np.ndarray]:
    """A 256-entry table that applies ``label_map`` and then ``reduce_zero_label`` in one indexing step.

    ``label_map`` sends old ids to new ids; a new id of -1 (a class left out of a custom class list)
    becomes 255, which is what the original's uint8 assignment wrapped it to. ``reduce_zero_label``
    sends 0 to 255 and k to k - 1, keeping 255 at 255.
    """
    if not label_map and not reduce_zero_label:
        return None
    table = np.arange(256, dtype=np.int64)
    for old, new in (label_map or {}).items():
        if not 0 <= int(old) <= 255 or not -1 <= int(new) <= 255:
            raise ValueError(f"label_map entry {old!r}: {new!r} is outside 0..255 (new id may be -1)")
        table[int(old)] = 255 if int(new) == -1 else int(new)
    if reduce_zero_label:
        table = np.where(table == 0, 255, np.where(table == 255, 255, table - 1))
    return table.astype(np.uint8)


def check_label_values(label: np.ndarray, filename: str, num_classes: int, ignore_index: int) -> None:
    if label.size == 0 or label.max() < num_classes:
        return
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    bad = [int(v) for v in present if v >= num_classes and v != ignore_index]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise DataError(
            f"{filename}: label values {shown} are outside the {num_classes} classes "
            f"(expected 0..{num_classes - 1} or {ignore_index} for ignore)"
        )


class LoadAnnotations:
    """Read ``seg_prefix/ann_info['seg_map']`` as class indices (Pillow, palette indices kept), check it
    against its image's size, apply the dataset's ``label_map`` and ``reduce_zero_label``, and check
    the values against the dataset's classes."""

    def __init__(
        self,
        reduce_zero_label: bool = False,
        file_client_args: Optional[Mapping] = None,
        imdecode_backend: str = "pillow",
    ) -> None:
        _check_file_client("LoadAnnotations", file_client_args)
        self.reduce_zero_label = reduce_zero_label
        self.imdecode_backend = imdecode_backend

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        filename = _join(results.get("seg_prefix"), results["ann_info"]["seg_map"])
        label = read_label(filename, backend=self.imdecode_backend)
        ori_shape = results.get("ori_shape")
        if ori_shape is not None and label.shape != tuple(ori_shape[:2]):
            image = results.get("filename", "its image")
            raise DataError(
                f"{filename}: label map is {label.shape[0]}x{label.shape[1]} (HxW) but {image} is "
                f"{ori_shape[0]}x{ori_shape[1]}"
            )
        table = label_lookup_table(results.get("label_map"), self.reduce_zero_label)
        if table is not None:
            label = table[label]
        if results.get("num_classes") is not None:
            try:
                check_label_values(label, filename, results["num_classes"], results.get("ignore_index", 255))
            except DataError as err:
                if results.get("label_map") and self.reduce_zero_label:
                    raise DataError(
                        f"{err}. Note: as in mmseg 0.x, label_map (made by a classes= subset) is applied to the raw "
                        "labels before reduce_zero_label, so on a reduce_zero_label dataset such as ADE20K it maps "
                        "each raw value by the class one above it and leaves the last raw value unmapped; the "
                        "original silently drops such pixels from its metrics. Remap the label files to the subset "
                        "(and drop classes=) instead"
                    ) from None
                raise
        results["gt_semantic_seg"] = label
        results.setdefault("seg_fields", []).append("gt_semantic_seg")
        return results

    def __repr__(self) -> str:
        return f"LoadAnnotations(reduce_zero_label={self.reduce_zero_label})"
