"""Array operations behind the transforms, with the original's exact size and rounding rules.

Sizes follow OpenCV's convention where noted: ``size`` is (width, height), ``shape`` is (height, width).
Resizing uses OpenCV, as the original does: its bilinear filter gives different pixels from Pillow's.
"""

from __future__ import annotations

import numbers
from typing import Sequence, Union

import cv2
import numpy as np

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

Scale = Union[float, int, Sequence[float]]


def scale_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """(w, h) multiplied by ``factor``, rounded half up: ``int(w * factor + 0.5)``."""
    w, h = size
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def rescale_size(size: tuple[int, int], scale: Scale) -> tuple[tuple[int, int], float]:
    """New (w, h) and factor for a keep-ratio resize.

    ``scale`` is a factor, or a (long, short) bound pair in either order: the image grows or shrinks
    as much as it can while its long side stays within the larger bound and its short side within the
    smaller one.
    """
    w, h = size
    if isinstance(scale, numbers.Number):
        if scale <= 0:
            raise ValueError(f"invalid scale {scale}: must be positive")
        factor = float(scale)
    elif isinstance(scale, (tuple, list)) and len(scale) == 2:
        factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    else:
        raise TypeError(f"scale must be a number or a pair of numbers, got {scale!r}")
    return scale_size((w, h), factor), factor


def imresize(img: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize to ``size`` = (w, h) with OpenCV."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"cannot resize an image of shape {img.shape[:2]} to (w={w}, h={h})")
    return cv2.resize(img, (w, h), interpolation=INTERPOLATIONS[interpolation])


def imrescale(img: np.ndarray, scale: Scale, interpolation: str = "bilinear") -> tuple[np.ndarray, float]:
    """Keep-ratio resize (see :func:`rescale_size`); returns the image and the factor used."""
    h, w = img.shape[:2]
    new_size, factor = rescale_size((w, h), scale)
    return imresize(img, new_size, interpolation), factor


def imflip(img: np.ndarray, direction: str = "horizontal") -> np.ndarray:
    """A contiguous flipped copy."""
    axes = {"horizontal": 1, "vertical": 0, "diagonal": (0, 1)}
    if direction not in axes:
        raise ValueError(f"flip direction must be one of {sorted(axes)}, got {direction!r}")
    return np.ascontiguousarray(np.flip(img, axis=axes[direction]))


def impad(img: np.ndarray, shape: Sequence[int], pad_val: Union[float, Sequence[float]] = 0) -> np.ndarray:
    """Pad at the bottom and right up to ``shape`` = (h, w); a larger image is left as it is."""
    h, w = img.shape[:2]
    out_h, out_w = max(int(shape[0]), h), max(int(shape[1]), w)
    if (out_h, out_w) == (h, w):
        return img
    out = np.empty((out_h, out_w) + img.shape[2:], dtype=img.dtype)
    out[...] = np.asarray(pad_val, dtype=img.dtype)
    out[:h, :w] = img
    return out


def impad_to_multiple(img: np.ndarray, divisor: int, pad_val: Union[float, Sequence[float]] = 0) -> np.ndarray:
    h, w = img.shape[:2]
    return impad(img, (-(-h // divisor) * divisor, -(-w // divisor) * divisor), pad_val)


def imnormalize(img: np.ndarray, mean: np.ndarray, std: np.ndarray, to_rgb: bool = True) -> np.ndarray:
    """(img - mean) / std as float32, after a BGR -> RGB swap when ``to_rgb``, bit for bit as the original.

    The original (mmseg's ``Normalize``: float32 mean and std, then OpenCV's in-place arithmetic) subtracts
    the mean in float32, then multiplies by 1 / std in float64 (1 / std in float64 too) and rounds the product
    to float32 once. A float32 multiply by a float32-rounded 1 / std differs by 1 ulp in about a quarter of
    the values.
    """
    out = img.astype(np.float32)
    if to_rgb:
        if out.ndim != 3 or out.shape[2] != 3:
            raise ValueError(f"to_rgb needs a 3-channel image, got shape {img.shape}")
        out = out[..., ::-1]
    mean32 = np.asarray(mean, dtype=np.float32).reshape(-1)
    stdinv64 = 1.0 / np.asarray(std, dtype=np.float32).astype(np.float64).reshape(-1)
    return np.ascontiguousarray(((out - mean32).astype(np.float64) * stdinv64).astype(np.float32))


def bgr2hsv(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2HSV)


def hsv2bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
