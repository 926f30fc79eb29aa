"""Semantic segmentation metrics, computed the way mmseg 0.x computes them.

Every metric comes from four per-class pixel counts summed over the whole data
set (not averaged per image):

    area_intersect[c]  pixels predicted c whose label is c
    area_union[c]      area_pred_label[c] + area_label[c] - area_intersect[c]
    area_pred_label[c] pixels predicted c
    area_label[c]      pixels labelled c

Pixels whose label equals ``ignore_index`` are dropped first; predictions or
labels outside ``[0, num_classes)`` are not counted in any class (as mmseg's
``torch.histc`` does). A class that never occurs gets NaN, and the summary means
skip NaN (``np.nanmean``).

Where this differs to mmseg 0.x, on purpose:
- the caller's label arrays are never modified (mmseg edits them in place when
  ``label_map`` or ``reduce_zero_label`` is used);
- predictions may also be torch tensors on any device, or ``.png`` files;
- unknown metric names are rejected before any counting is done.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from ddpseg.evaluation.summary import format_metric_tables

ALLOWED_METRICS = ("mIoU", "mDice", "mFscore")

LabelSource = Union[np.ndarray, torch.Tensor, str, "os.PathLike[str]"]
Areas = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_label_map(source: LabelSource, what: str = "label map") -> torch.Tensor:
    """Return ``source`` as an integer tensor without copying arrays needlessly.

    Files: ``.npy`` is read with ``np.load``, anything else with Pillow exactly
    as stored (a palettised PNG gives its indices, not colours).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} file not found: {path}")
        if path.endswith(".npy"):
            array = np.load(path)
        else:
            with Image.open(path) as image:
                array = np.array(image)
        if array.ndim != 2:
            raise ValueError(
                f"{what} file {path} holds an array of shape {array.shape}; expected a "
                "single-channel (H, W) map of class indices"
            )
        source = array
    if isinstance(source, np.ndarray):
        # from_numpy cannot take negative strides (flipped views).
        tensor = torch.from_numpy(np.ascontiguousarray(source))
    elif isinstance(source, torch.Tensor):
        tensor = source
    else:
        raise TypeError(
            f"{what} must be a numpy array, a torch tensor or a file path, got "
            f"{type(source).__name__}"
        )
    if tensor.is_floating_point():
        if not torch.equal(tensor, tensor.round()):
            raise ValueError(f"{what} has non-integer values; expected class indices")
    elif tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{what} has dtype {tensor.dtype}; expected integer class indices")
    return tensor


def _remap_label(
    label: torch.Tensor, label_map: Optional[Mapping[int, int]], reduce_zero_label: bool
) -> torch.Tensor:
    """Apply ``label_map`` then ``reduce_zero_label`` on a fresh int64 copy."""
    out = label.to(torch.int64, copy=True)
    if label_map:
        # Compare against the original values so chained maps (1->2, 2->3) do not cascade.
        for old_id, new_id in label_map.items():
            out[label == old_id] = new_id
    if reduce_zero_label:
        # Class 0 becomes ignore (255) and every other class shifts down by one;
        # 255 is hard-coded here in mmseg too, whatever ignore_index is.
        out[out == 0] = 255
        out = out - 1
        out[out == 254] = 255
    return out


def _class_histogram(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    in_range = (values >= 0) & (values < num_classes)
    return torch.bincount(values[in_range], minlength=num_classes)


def intersect_and_union(
    pred_label: LabelSource,
    label: LabelSource,
    num_classes: int,
    ignore_index: int,
    label_map: Optional[Mapping[int, int]] = dict(),  # noqa: B006 - read only, mmseg's signature
    reduce_zero_label: bool = False,
) -> Areas:
    """Per-class pixel counts of one prediction against its label map.

    Args:
        pred_label: predicted class indices, array/tensor or ``.npy``/``.png`` path.
        label: ground-truth class indices, same shape (any number of dims).
        num_classes: number of classes K.
        ignore_index: label value whose pixels are not evaluated.
        label_map: ``{old_label: new_label}`` applied to the ground truth first.
        reduce_zero_label: treat label 0 as ignore and shift the others down by one.

    Returns:
        ``(area_intersect, area_union, area_pred_label, area_label)``, each a
        float64 CPU tensor of shape (K,). The inputs are not modified.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = load_label_map(pred_label, "prediction")
    gt = load_label_map(label, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} does not match ground-truth shape "
            f"{tuple(gt.shape)}"
        )
    gt = _remap_label(gt, label_map, reduce_zero_label)
    pred = pred.to(device=gt.device, dtype=torch.int64)

    valid = gt != ignore_index
    pred, gt = pred[valid], gt[valid]
    area_intersect = _class_histogram(pred[pred == gt], num_classes)
    area_pred_label = _class_histogram(pred, num_classes)
    area_label = _class_histogram(gt, num_classes)
    area_union = area_pred_label + area_label - area_intersect
    areas = (area_intersect, area_union, area_pred_label, area_label)
    return tuple(a.cpu().to(torch.float64) for a in areas)  # type: ignore[return-value]


def _zip_same_length(results: Iterable, gt_seg_maps: Iterable) -> Iterable[tuple]:
    missing = object()
    pairs = itertools.zip_longest(results, gt_seg_maps, fillvalue=missing)
    for index, (result, gt) in enumerate(pairs):
        if result is missing or gt is missing:
            raise ValueError(
                f"results and gt_seg_maps have different lengths (one ends at item {index})"
            )
        yield result, gt


def total_intersect_and_union(
    results: Iterable[LabelSource],
    gt_seg_maps: Iterable[LabelSource],
    num_classes: int,
    ignore_index: int,
    label_map: Optional[Mapping[int, int]] = dict(),  # noqa: B006
    reduce_zero_label: bool = False,
) -> Areas:
    """Sum :func:`intersect_and_union` over pairs of maps (a generator is fine)."""
    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for result, gt in _zip_same_length(results, gt_seg_maps):
        areas = intersect_and_union(
            result, gt, num_classes, ignore_index, label_map, reduce_zero_label
        )
        for total, area in zip(totals, areas):
            total += area
    return tuple(totals)  # type: ignore[return-value]


def f_score(precision, recall, beta: float = 1):
    """F-beta score; 0/0 gives NaN (mmseg does the same, even for a present class)."""
    return (1 + beta**2) * (precision * recall) / ((beta**2 * precision) + recall)


def _check_metrics(metrics: Union[str, Sequence[str]]) -> list[str]:
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in ALLOWED_METRICS]
    if unknown:
        raise KeyError(
            f"metrics {unknown} are not supported; choose from {list(ALLOWED_METRICS)}"
        )
    return metrics


def total_area_to_metrics(
    total_area_intersect,
    total_area_union,
    total_area_pred_label,
    total_area_label,
    metrics: Union[str, Sequence[str]] = ("mIoU",),
    nan_to_num: Optional[float] = None,
    beta: float = 1,
) -> "OrderedDict[str, np.ndarray]":
    """Turn summed per-class counts into metrics.

    Returns an OrderedDict starting with ``'aAcc'`` (0-d array), then per metric:
    mIoU -> ``IoU``, ``Acc``; mDice -> ``Dice``, ``Acc``; mFscore -> ``Fscore``,
    ``Precision``, ``Recall`` (each a float64 array of shape (K,), NaN for classes
    that never occur unless ``nan_to_num`` replaces them).
    """
    metrics = _check_metrics(metrics)
    intersect, union, pred_area, label_area = (
        torch.as_tensor(a, dtype=torch.float64).cpu()
        for a in (total_area_intersect, total_area_union, total_area_pred_label, total_area_label)
    )
    ret: "OrderedDict[str, torch.Tensor]" = OrderedDict(aAcc=intersect.sum() / label_area.sum())
    for metric in metrics:
        if metric == "mIoU":
            ret["IoU"] = intersect / union
            ret["Acc"] = intersect / label_area
        elif metric == "mDice":
            ret["Dice"] = 2 * intersect / (pred_area + label_area)
            ret["Acc"] = intersect / label_area
        else:  # mFscore
            precision = intersect / pred_area
            recall = intersect / label_area
            ret["Fscore"] = f_score(precision, recall, beta)
            ret["Precision"] = precision
            ret["Recall"] = recall
    out = OrderedDict((name, value.numpy()) for name, value in ret.items())
    if nan_to_num is not None:
        out = OrderedDict(
            (name, np.nan_to_num(value, nan=nan_to_num)) for name, value in out.items()
        )
    return out


def result_keys(metrics: Union[str, Sequence[str]] = ("mIoU",)) -> tuple[list[str], list[str]]:
    """The keys an evaluation with ``metrics`` returns (see ``SegEvaluator.summary``): the summary keys
    (``['aAcc', 'mIoU', 'mAcc']`` for mIoU) and the per-class prefixes (``['IoU', 'Acc']``: keys
    ``'IoU.<class name>'``). For checking ``evaluation.save_best`` before any evaluation runs."""
    one = torch.ones(1, dtype=torch.float64)
    names = list(total_area_to_metrics(one, one, one, one, metrics))
    return [n if n == "aAcc" else "m" + n for n in names], [n for n in names if n != "aAcc"]


def eval_metrics(
    results: Iterable[LabelSource],
    gt_seg_maps: Iterable[LabelSource],
    num_classes: int,
    ignore_index: int,
    metrics: Union[str, Sequence[str]] = ["mIoU"],  # noqa: B006 - mmseg's signature
    nan_to_num: Optional[float] = None,
    label_map: Optional[Mapping[int, int]] = dict(),  # noqa: B006
    reduce_zero_label: bool = False,
    beta: float = 1,
) -> "OrderedDict[str, np.ndarray]":
    """Metrics over a data set of predictions; see :func:`total_area_to_metrics`."""
    _check_metrics(metrics)
    areas = total_intersect_and_union(
        results, gt_seg_maps, num_classes, ignore_index, label_map, reduce_zero_label
    )
    return total_area_to_metrics(*areas, metrics, nan_to_num, beta)


def mean_iou(
    results: Iterable[LabelSource],
    gt_seg_maps: Iterable[LabelSource],
    num_classes: int,
    ignore_index: int,
    nan_to_num: Optional[float] = None,
    label_map: Optional[Mapping[int, int]] = dict(),  # noqa: B006
    reduce_zero_label: bool = False,
) -> "OrderedDict[str, np.ndarray]":
    """``aAcc``, ``IoU`` and ``Acc``: :func:`eval_metrics` with ``['mIoU']``."""
    return eval_metrics(
        results, gt_seg_maps, num_classes, ignore_index, ["mIoU"], nan_to_num,
        label_map, reduce_zero_label,
    )


def mean_dice(
    results: Iterable[LabelSource],
    gt_seg_maps: Iterable[LabelSource],
    num_classes: int,
    ignore_index: int,
    nan_to_num: Optional[float] = None,
    label_map: Optional[Mapping[int, int]] = dict(),  # noqa: B006
    reduce_zero_label: bool = False,
) -> "OrderedDict[str, np.ndarray]":
    """``aAcc``, ``Dice`` and ``Acc``: :func:`eval_metrics` with ``['mDice']``."""
    return eval_metrics(
        results, gt_seg_maps, num_classes, ignore_index, ["mDice"], nan_to_num,
        label_map, reduce_zero_label,
    )


def mean_fscore(
    results: Iterable[LabelSource],
    gt_seg_maps: Iterable[LabelSource],
    num_classes: int,
    ignore_index: int,
    nan_to_num: Optional[float] = None,
    label_map: Optional[Mapping[int, int]] = dict(),  # noqa: B006
    reduce_zero_label: bool = False,
    beta: float = 1,
) -> "OrderedDict[str, np.ndarray]":
    """``aAcc``, ``Fscore``, ``Precision``, ``Recall``: ``eval_metrics(['mFscore'])``."""
    return eval_metrics(
        results, gt_seg_maps, num_classes, ignore_index, ["mFscore"], nan_to_num,
        label_map, reduce_zero_label, beta,
    )


def pre_eval_to_metrics(
    pre_eval_results: Sequence[Areas],
    metrics: Union[str, Sequence[str]] = ["mIoU"],  # noqa: B006
    nan_to_num: Optional[float] = None,
    beta: float = 1,
) -> "OrderedDict[str, np.ndarray]":
    """Metrics from a list of per-image :func:`intersect_and_union` results."""
    pre_eval_results = list(pre_eval_results)
    if not pre_eval_results:
        raise ValueError("pre_eval_results is empty: no image was evaluated")
    columns = tuple(zip(*pre_eval_results))
    if len(columns) != 4:
        raise ValueError(
            "each pre-eval result must be 4 tensors (intersect, union, pred, label), "
            f"got {len(columns)}"
        )
    return total_area_to_metrics(*(sum(column) for column in columns), metrics, nan_to_num, beta)


class SegEvaluator:
    """Streaming accumulator of the per-class counts; holds no predictions.

    ``update`` takes one map (H, W) or a batch (N, H, W) of predictions and
    labels; counts are summed over pixels, so a batch counts exactly like its
    images one by one. With several processes, call ``all_reduce()`` once after
    the last ``update`` and before ``compute``/``summary``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        label_map: Optional[Mapping[int, int]] = None,
        reduce_zero_label: bool = False,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_map = dict(label_map or {})
        self.reduce_zero_label = reduce_zero_label
        self.reset()

    def reset(self) -> None:
        # Rows: intersect, union, pred, label.
        self.areas = torch.zeros(4, self.num_classes, dtype=torch.float64)
        self.num_samples = 0
        self._reduced = False

    def update(self, pred: LabelSource, gt: LabelSource) -> None:
        if self._reduced:
            raise RuntimeError("SegEvaluator.update() after all_reduce(); call reset() first")
        areas = intersect_and_union(
            pred, gt, self.num_classes, self.ignore_index, self.label_map, self.reduce_zero_label
        )
        self.areas += torch.stack(areas)
        shape = getattr(pred, "shape", ())  # file paths are single images
        self.num_samples += int(shape[0]) if len(shape) == 3 else 1

    def all_reduce(self) -> None:
        """Sum counts over all torch.distributed ranks; a no-op without a process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise RuntimeError(
                "SegEvaluator.all_reduce() called twice; counts would be summed again"
            )
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        count = torch.tensor([float(self.num_samples)], dtype=torch.float64)
        packed = torch.cat([self.areas.flatten(), count]).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.cpu()
        self.areas = packed[:-1].view(4, self.num_classes).clone()
        self.num_samples = int(packed[-1].item())
        self._reduced = True

    def compute(
        self,
        metrics: Union[str, Sequence[str]] = ("mIoU",),
        nan_to_num: Optional[float] = None,
        beta: float = 1,
    ) -> "OrderedDict[str, np.ndarray]":
        """Same result as :func:`eval_metrics` on all maps passed to ``update``."""
        return total_area_to_metrics(*self.areas, metrics, nan_to_num, beta)

    def summary(
        self,
        class_names: Optional[Sequence] = None,
        metrics: Union[str, Sequence[str]] = ("mIoU",),
    ) -> tuple[str, str, dict[str, float]]:
        """``(per_class_table, summary_table, flat_results)`` as mmseg's evaluate prints/returns.

        ``class_names`` defaults to ``0 .. K-1``, as in mmseg when a dataset has no names.
        """
        if class_names is None:
            class_names = tuple(range(self.num_classes))
        return format_metric_tables(self.compute(metrics), class_names)
