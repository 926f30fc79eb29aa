"""The Cityscapes test pipeline on the shared demo frame against the original's preprocessing,
computed here independently: decode to RGB with Pillow, keep-ratio scale factor
min(2048 / long side, 1024 / short side), sizes int(x * f + 0.5), OpenCV bilinear on uint8 (what the
original's resize does), then (x - mean) / std in float64."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ddpseg.data import build_pipeline
from tests.data.pipelines import CITYSCAPES_TEST

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "cityscapes_demo.png"  # copy of shared/assets
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def test_demo_frame_through_cityscapes_test_pipeline_matches_original_preprocessing():
    rgb = np.array(Image.open(DEMO).convert("RGB"))
    h, w = rgb.shape[:2]
    factor = min(2048 / max(h, w), 1024 / min(h, w))
    size = (int(w * factor + 0.5), int(h * factor + 0.5))
    expected = (cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR).astype(np.float64) - MEAN) / STD

    out = build_pipeline(CITYSCAPES_TEST)({"img_info": {"filename": str(DEMO)}, "img_prefix": None})
    (img,) = out["img"]
    (meta,) = out["img_metas"]
    assert tuple(img.shape) == (3, size[1], size[0]) == (3, 1024, 2048)
    assert np.abs(img.numpy().transpose(1, 2, 0) - expected).max() <= 1e-3
    assert meta["ori_shape"] == (512, 1024, 3) and meta["img_shape"] == (1024, 2048, 3)
    np.testing.assert_array_equal(meta["scale_factor"], [2.0, 2.0, 2.0, 2.0])
    assert meta["flip"] is False and meta["img_norm_cfg"]["to_rgb"] is True
