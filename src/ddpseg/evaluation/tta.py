"""Test-time inference of mmseg 0.x's ``EncoderDecoder``: whole image, sliding window, multi-scale + flip.

Every function takes ``logits_fn(img) -> logits``: normalised images (B, 3, h, w) to per-class scores
(B, C, h, w) at the same size, i.e. the original's ``encode_decode`` (for DDP: ``model.sample_logits``
with the number of steps and the noise generator bound). That keeps the arithmetic testable without a
model. The results equal the original's step for step:

* ``whole``: one call; the padding of the test pipeline is cut off (``img_shape``) and the scores are
  resized bilinearly to ``ori_shape``.
* ``slide``: windows of ``crop_size`` every ``stride`` pixels (the last row/column of windows moved back
  to end at the image border, windows clipped to the image), scores summed per pixel and divided by the
  number of windows that saw it, then cut and resized as above.
* :func:`inference`: either mode, then softmax over classes, then the flip undone. The softmax is
  applied even when the model already returns probabilities (DDP's ``accumulation=True``): the original
  does so, and the argmax it produces is what the published numbers were measured with.
* :func:`aug_test_probs`: the mean of :func:`inference` over the augmented copies of an image
  (multi-scale and flip; one copy gives plain :func:`inference`).

Channel count: the window/resize arithmetic never looks at the channels, so a ``logits_fn`` may return
several score maps stacked along dim 1 (the Python API stacks the score map of every diffusion step);
``num_classes`` then makes the softmax run per group of ``num_classes`` channels.

One addition: an image smaller than ``min_size`` (32, the backbones' total stride) on a side after the
test pipeline is padded at the bottom/right with zeros (the normalised mean colour, what the pipeline's
``Pad`` writes) before inference; the padding is cut off again with the rest. The original fails on
such images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LogitsFn",
    "MIN_INPUT_SIZE",
    "aug_test",
    "aug_test_probs",
    "grouped_softmax",
    "image_generator",
    "inference",
    "merged_scores",
    "simple_test",
    "slide_inference",
    "undo_flip",
    "whole_inference",
]

LogitsFn = Callable[[Tensor], Tensor]
ImgMetas = Sequence[Mapping[str, Any]]

MIN_INPUT_SIZE = 32
TEST_MODES = ("whole", "slide")


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"test_cfg.{name} must be an int or (h, w) pair of ints, got {value!r}")


def _to_original_size(scores: Tensor, img_meta: Mapping[str, Any], align_corners: bool) -> Tensor:
    """Cut the pipeline's padding (everything beyond ``img_shape``) and resize to ``ori_shape``."""
    h, w = img_meta["img_shape"][:2]
    scores = scores[:, :, :h, :w]
    size = tuple(int(s) for s in img_meta["ori_shape"][:2])
    if tuple(scores.shape[2:]) == size:
        return scores  # bilinear to the same size is the identity
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=align_corners)


def whole_inference(
    logits_fn: LogitsFn, img: Tensor, img_meta: ImgMetas, rescale: bool = True, align_corners: bool = False
) -> Tensor:
    """Scores of the full image; with ``rescale`` at the original image size."""
    scores = logits_fn(img)
    return _to_original_size(scores, img_meta[0], align_corners) if rescale else scores


def slide_inference(
    logits_fn: LogitsFn,
    img: Tensor,
    img_meta: ImgMetas,
    crop_size: Any,
    stride: Any,
    rescale: bool = True,
    align_corners: bool = False,
) -> Tensor:
    """Scores from overlapping windows, averaged where they overlap; with ``rescale`` at the original size.

    A window larger than the image is clipped to it (the model then sees a smaller input, no padding).
    """
    h_crop, w_crop = _pair(crop_size, "crop_size")
    h_stride, w_stride = _pair(stride, "stride")
    if min(h_crop, w_crop, h_stride, w_stride) < 1:
        raise ValueError(f"test_cfg crop_size {crop_size!r} and stride {stride!r} must be positive")
    batch, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    summed: Optional[Tensor] = None
    count = img.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_scores = logits_fn(img[:, :, y1:y2, x1:x2])
            if summed is None:  # the channel count comes from the model's output
                summed = crop_scores.new_zeros((batch, crop_scores.shape[1], h_img, w_img))
            summed[:, :, y1:y2, x1:x2] += crop_scores
            count[:, :, y1:y2, x1:x2] += 1
    assert summed is not None and bool((count > 0).all()), "sliding windows left pixels uncovered"
    scores = summed / count
    return _to_original_size(scores, img_meta[0], align_corners) if rescale else scores


def _pad_to_min_size(img: Tensor, min_size: int) -> Tensor:
    h, w = img.shape[2:]
    if h >= min_size and w >= min_size:
        return img
    return F.pad(img, (0, max(min_size - w, 0), 0, max(min_size - h, 0)), value=0.0)


def merged_scores(
    logits_fn: LogitsFn,
    img: Tensor,
    img_meta: ImgMetas,
    test_cfg: Mapping[str, Any],
    rescale: bool = True,
    align_corners: bool = False,
    min_size: int = MIN_INPUT_SIZE,
) -> Tensor:
    """Raw scores of one augmented copy by ``test_cfg['mode']`` (still flipped if the copy is)."""
    mode = test_cfg.get("mode", "whole")
    if mode not in TEST_MODES:
        raise ValueError(f"test_cfg.mode must be one of {TEST_MODES}, got {mode!r}")
    ori_shape = img_meta[0]["ori_shape"]
    if any(tuple(m["ori_shape"]) != tuple(ori_shape) for m in img_meta):
        raise ValueError("all images of a test batch must share ori_shape")
    img = _pad_to_min_size(img, min_size)
    if mode == "slide":
        missing = [k for k in ("crop_size", "stride") if k not in test_cfg]
        if missing:
            raise ValueError(f"test_cfg mode 'slide' needs {missing}; got {dict(test_cfg)}")
        return slide_inference(
            logits_fn, img, img_meta, test_cfg["crop_size"], test_cfg["stride"], rescale, align_corners
        )
    return whole_inference(logits_fn, img, img_meta, rescale, align_corners)


def grouped_softmax(scores: Tensor, num_classes: Optional[int] = None) -> Tensor:
    """Softmax over dim 1, or over each run of ``num_classes`` channels when several maps are stacked."""
    if num_classes is None or scores.shape[1] == num_classes:
        return F.softmax(scores, dim=1)
    if scores.shape[1] % num_classes:
        raise ValueError(f"{scores.shape[1]} channels are not a multiple of num_classes={num_classes}")
    b, _, h, w = scores.shape
    return F.softmax(scores.view(b, -1, num_classes, h, w), dim=2).view(b, -1, h, w)


def undo_flip(x: Tensor, img_meta: ImgMetas) -> Tensor:
    """Flip (B, C, H, W) maps of a flipped copy back to the image's orientation."""
    if not img_meta[0].get("flip", False):
        return x
    direction = img_meta[0].get("flip_direction", "horizontal")
    if direction == "horizontal":
        return x.flip(dims=(3,))
    if direction == "vertical":
        return x.flip(dims=(2,))
    raise ValueError(f"flip_direction must be 'horizontal' or 'vertical', got {direction!r}")


def inference(
    logits_fn: LogitsFn,
    img: Tensor,
    img_meta: ImgMetas,
    test_cfg: Mapping[str, Any],
    rescale: bool = True,
    align_corners: bool = False,
    num_classes: Optional[int] = None,
    min_size: int = MIN_INPUT_SIZE,
) -> Tensor:
    """Class probabilities (B, C, H, W) of one augmented copy, at the original size and orientation."""
    scores = merged_scores(logits_fn, img, img_meta, test_cfg, rescale, align_corners, min_size)
    return undo_flip(grouped_softmax(scores, num_classes), img_meta)


def aug_test_probs(
    logits_fn: LogitsFn,
    imgs: Sequence[Tensor],
    img_metas: Sequence[ImgMetas],
    test_cfg: Mapping[str, Any],
    align_corners: bool = False,
    num_classes: Optional[int] = None,
    min_size: int = MIN_INPUT_SIZE,
) -> Tensor:
    """Mean of :func:`inference` over the augmented copies ``imgs`` (one copy: :func:`inference` itself)."""
    if len(imgs) != len(img_metas) or not imgs:
        raise ValueError(f"{len(imgs)} augmented images but {len(img_metas)} meta lists")
    probs = inference(logits_fn, imgs[0], img_metas[0], test_cfg, True, align_corners, num_classes, min_size)
    for img, meta in zip(imgs[1:], img_metas[1:]):
        probs += inference(logits_fn, img, meta, test_cfg, True, align_corners, num_classes, min_size)
    probs /= len(imgs)
    return probs


def _label_maps(probs: Tensor) -> list[np.ndarray]:
    return list(probs.argmax(dim=1).cpu().numpy())


def simple_test(
    logits_fn: LogitsFn,
    img: Tensor,
    img_meta: ImgMetas,
    test_cfg: Mapping[str, Any],
    align_corners: bool = False,
    min_size: int = MIN_INPUT_SIZE,
) -> list[np.ndarray]:
    """One (H, W) int64 label map per image, without augmentation."""
    return _label_maps(inference(logits_fn, img, img_meta, test_cfg, True, align_corners, None, min_size))


def aug_test(
    logits_fn: LogitsFn,
    imgs: Sequence[Tensor],
    img_metas: Sequence[ImgMetas],
    test_cfg: Mapping[str, Any],
    align_corners: bool = False,
    min_size: int = MIN_INPUT_SIZE,
) -> list[np.ndarray]:
    """One (H, W) int64 label map per image from the mean probabilities of its augmented copies."""
    return _label_maps(aug_test_probs(logits_fn, imgs, img_metas, test_cfg, align_corners, None, min_size))


def image_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The noise generator for dataset image ``index``: seeded from (seed, index) only.

    The original draws each image's initial noise from the global RNG, so a result depends on which
    images a process saw before; seeding per image makes one process and N processes agree exactly.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))
    return generator
