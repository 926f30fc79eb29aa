"""Evaluate a segmentor on a test dataset: inference over this rank's share, metrics over all ranks.

Used by ``ddpseg test`` / ``tools/test.py`` and by the trainer's periodic evaluation. Importing it does
nothing; :func:`evaluate_dataset` runs in one process or in every process of a torch.distributed group.

Randomness: DDP's sampler starts from noise. Each image's noise comes from a generator seeded with
``(seed, dataset index)`` (:func:`ddpseg.evaluation.tta.image_generator`), so the numbers do not depend
on the number of processes, the order of images or what ran before. (The original draws from the
global RNG, so its numbers shift a little with the GPU count.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ddpseg.config import check_bool, check_keys
from ddpseg.data.build import build_test_dataloader
from ddpseg.data.datasets import CustomDataset
from ddpseg.data.image_io import read_image
from ddpseg.data.transforms import MultiScaleFlipAug
from ddpseg.engine.distributed import get_rank, get_world_size
from ddpseg.engine.outputs import check_output_dir
from ddpseg.evaluation.metrics import ALLOWED_METRICS, SegEvaluator
from ddpseg.evaluation.tta import aug_test_probs, image_generator
from ddpseg.models.segmentor import check_steps
from ddpseg.visualize import overlay, save_image

__all__ = ["AUG_TEST_RATIOS", "FORMAT_KEYS", "check_format_args", "enable_aug_test", "evaluate_dataset", "format_tables"]

# ``--aug-test`` of the original's tools/test.py: these scales of the test scale, each also flipped.
AUG_TEST_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

PathLike = Union[str, "os.PathLike[str]"]

# The ``format_args`` a dataset's ``format_results`` takes (mmseg 0.x: Cityscapes / ADE20K), ``--eval-options``.
FORMAT_KEYS = ("imgfile_prefix", "to_label_id")


def check_format_args(format_args: Mapping[str, Any], where: str = "format_args (--eval-options)") -> None:
    """Only the keys ``format_results`` takes, ``to_label_id`` a bool; errors name ``where``."""
    check_keys(format_args, FORMAT_KEYS, where)
    check_bool(format_args.get("to_label_id", True), f"{where} to_label_id")


def enable_aug_test(dataset: CustomDataset, ratios: Sequence[float] = AUG_TEST_RATIOS) -> None:
    """Turn the dataset's ``MultiScaleFlipAug`` into the multi-scale + flip test (in place), as the
    original's ``--aug-test`` does to ``cfg.data.test.pipeline[1]``."""
    transforms = dataset.pipeline.transforms
    places = [i for i, t in enumerate(transforms) if isinstance(t, MultiScaleFlipAug)]
    if len(places) != 1:
        raise ValueError(f"--aug-test needs exactly one MultiScaleFlipAug in the test pipeline, found {len(places)}")
    old: MultiScaleFlipAug = transforms[places[0]]
    if old.img_scale is None:
        base = None
    elif old.img_ratios is None and len(old.img_scale) == 1:
        base = old.img_scale[0]
    elif old.img_ratios is not None and 1.0 in old.img_ratios:
        base = old.img_scale[old.img_ratios.index(1.0)]
    else:
        raise ValueError(f"--aug-test needs one test scale in MultiScaleFlipAug, got {old.img_scale}")
    transforms[places[0]] = MultiScaleFlipAug(
        transforms=old.transforms.transforms,
        img_scale=base,
        img_ratios=list(ratios),
        flip=True,
        flip_direction=old.flip_direction,
    )


def format_tables(class_table: str, summary_table: str) -> str:
    """The text the original prints after testing (mmseg's ``CustomDataset.evaluate``)."""
    return f"per class results:\n\n{class_table}\nSummary:\n\n{summary_table}"


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def evaluate_dataset(
    model: nn.Module,
    dataset: CustomDataset,
    *,
    steps: Optional[int] = None,
    aug_test: bool = False,
    seed: int = 0,
    metrics: Union[str, Sequence[str], None] = ("mIoU",),
    show_dir: Optional[PathLike] = None,
    opacity: float = 0.5,
    format_only: bool = False,
    format_args: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    workers: int = 0,
    print_tables: bool = True,
) -> dict[str, Any]:
    """Run the model over ``dataset`` and return mmseg's result dict (on every rank).

    Args:
        model: a DDP segmentor (a ``DistributedDataParallel`` wrapper is unwrapped); left in the
            train/eval mode it came in.
        dataset: a test-mode dataset with the test pipeline (``build_dataset(cfg.data.test)``).
        steps: diffusion steps (default: the model's ``timesteps``).
        aug_test: multi-scale (0.5-1.75) + flip test, applied to the dataset's pipeline in place.
        seed: base of the per-image noise generators (see the module docstring).
        metrics: any of ``'mIoU'``, ``'mDice'``, ``'mFscore'``; None: predict only (``show_dir``), no labels read.
        show_dir: write ``<show_dir>/<image path in the dataset>`` with the prediction over the image.
        opacity: of the overlay colours, in (0, 1].
        format_only: no metrics; write the dataset's submission files (``format_args`` must hold
            ``imgfile_prefix``; e.g. Cityscapes label-id PNGs) and return ``{}``.
        progress: a progress bar on rank 0.
        workers: loader worker processes per rank.
        print_tables: print the per-class and summary tables on rank 0.

    Returns:
        ``{'aAcc': .., 'mIoU': .., 'mAcc': .., 'IoU.<class>': .., 'Acc.<class>': .., ...}`` as fractions
        (the printed percentages / 100), identical on every rank; ``{}`` with ``format_only`` or no metrics.
    """
    segmentor = model.module if hasattr(model, "module") else model
    metric_list = [] if metrics is None or format_only else [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metric_list if m not in ALLOWED_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; supported: {list(ALLOWED_METRICS)}")
    if dataset.num_classes != segmentor.num_classes:
        raise ValueError(
            f"the dataset has {dataset.num_classes} classes but the model predicts {segmentor.num_classes}; "
            "the checkpoint/config does not belong to this dataset"
        )
    if not 0 < opacity <= 1:
        raise ValueError(f"opacity must be in (0, 1], got {opacity}")
    if steps is not None:
        check_steps(steps)
    format_args = dict(format_args or {})
    if format_only:
        check_format_args(format_args)
        if "imgfile_prefix" not in format_args:
            raise ValueError("format_only needs format_args['imgfile_prefix'] (--eval-options imgfile_prefix=DIR)")
        check_output_dir(format_args["imgfile_prefix"], "--format-only output folder")
    if show_dir is not None:
        check_output_dir(show_dir, "--show-dir")
    if aug_test:
        enable_aug_test(dataset)

    rank, world_size = get_rank(), get_world_size()
    device = next(segmentor.parameters()).device
    loader = build_test_dataloader(
        dataset, workers_per_gpu=workers, dist=world_size > 1, rank=rank, world_size=world_size, seed=seed,
        pin_memory=device.type == "cuda",
    )
    # This rank's dataset indices; the sampler repeats some to even out the ranks: those are skipped.
    indices = loader.sampler.epoch_indices(0)[0]
    evaluator = SegEvaluator(segmentor.num_classes, ignore_index=dataset.ignore_index)
    was_training = segmentor.training
    segmentor.eval()
    bar = _progress(len(dataset), progress and rank == 0)
    try:
        for position, (index, batch) in enumerate(zip(indices, loader)):
            if rank + position * world_size >= len(dataset):
                continue
            generator = image_generator(seed, index, device)

            def logits_fn(img: torch.Tensor) -> torch.Tensor:
                return segmentor.sample_logits(img, steps=steps, generator=generator)

            imgs = [img.to(device) for img in batch["img"]]
            with torch.no_grad():
                probs = aug_test_probs(logits_fn, imgs, batch["img_metas"], segmentor.test_cfg, segmentor.align_corners)
            pred = probs.argmax(dim=1)[0].cpu().numpy()
            meta = batch["img_metas"][0][0]
            if format_only:
                try:
                    dataset.format_results([pred], indices=[index], **format_args)
                except NotImplementedError as err:
                    raise ValueError(f"--format-only: {err}") from None
            elif metric_list:
                evaluator.update(pred, dataset.get_gt_seg_map(index))
            if show_dir is not None:
                rgb = read_image(meta["filename"])[:, :, ::-1]
                save_image(Path(show_dir) / meta["ori_filename"], overlay(np.ascontiguousarray(rgb), pred, dataset.PALETTE, opacity))
            if bar is not None:
                bar.update(min(world_size, len(dataset) - bar.n))
    finally:
        if bar is not None:
            bar.close()
        segmentor.train(was_training)
    if not metric_list:
        return {}
    evaluator.all_reduce()
    class_table, summary_table, flat = evaluator.summary(dataset.CLASSES, metric_list)
    if print_tables and rank == 0:
        print(format_tables(class_table, summary_table), flush=True)
    return flat
