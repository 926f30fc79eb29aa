"""Evaluation: mmseg-compatible segmentation metrics and result tables."""

from ddpseg.evaluation.class_names import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
)
from ddpseg.evaluation.metrics import (
    ALLOWED_METRICS,
    SegEvaluator,
    eval_metrics,
    f_score,
    intersect_and_union,
    load_label_map,
    mean_dice,
    mean_fscore,
    mean_iou,
    pre_eval_to_metrics,
    total_area_to_metrics,
    total_intersect_and_union,
)
from ddpseg.evaluation.summary import format_metric_tables, render_table

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "ALLOWED_METRICS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "SegEvaluator",
    "eval_metrics",
    "f_score",
    "format_metric_tables",
    "intersect_and_union",
    "load_label_map",
    "mean_dice",
    "mean_fscore",
    "mean_iou",
    "pre_eval_to_metrics",
    "render_table",
    "total_area_to_metrics",
    "total_intersect_and_union",
]
