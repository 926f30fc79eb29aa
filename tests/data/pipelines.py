"""The data settings of the repository's config files, read with ddpseg's Config as users' configs are."""

from __future__ import annotations

import copy
from pathlib import Path

from ddpseg.config import Config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def config_data(name: str) -> dict:
    """``data`` of ``configs/<name>`` as plain dicts, e.g. ``config_data('_base_/datasets/cityscapes.py')``."""
    return Config.fromfile(CONFIGS / name).to_dict()["data"]


def scaled(pipeline: list, img_scale, crop_size=None, **tta) -> list:
    """A copy of ``pipeline`` at another size (tests use small images); ``tta`` sets arguments of
    MultiScaleFlipAug such as img_ratios and flip."""
    pipeline = copy.deepcopy(pipeline)
    for step in pipeline:
        if step["type"] in ("Resize", "MultiScaleFlipAug") and "img_scale" in step:
            step["img_scale"] = img_scale
        if step["type"] == "RandomCrop":
            step["crop_size"] = crop_size
        if step["type"] == "Pad":
            step["size"] = crop_size
        if step["type"] == "MultiScaleFlipAug":
            step.update(tta)
    return pipeline


CITYSCAPES = config_data("_base_/datasets/cityscapes.py")
ADE20K = config_data("_base_/datasets/ade20k.py")
CITYSCAPES_TRAIN = CITYSCAPES["train"]["pipeline"]
CITYSCAPES_TEST = CITYSCAPES["test"]["pipeline"]
ADE20K_TRAIN = ADE20K["train"]["pipeline"]
ADE20K_TEST = ADE20K["test"]["pipeline"]
