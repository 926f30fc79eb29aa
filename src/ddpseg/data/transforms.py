"""Training and test transforms as the original's configs name them, and the pipeline builder.

Every transform is a small class called as ``transform(results, rng) -> results`` on a dict of
arrays (the keys are the original's: ``img``, ``gt_semantic_seg``, ``seg_fields``, ``img_shape``, ...).

Randomness: random transforms draw only from the ``rng`` (a ``numpy.random.Generator``) they are
handed, never from global state. The dataset makes one generator per sample from a seed the sampler
hands out with the index, so a sample's augmentation depends on the run's seed, the epoch and the
sample's place in that epoch, and not on how many workers load it or which one does. The draws
follow the original's distributions and order exactly (Resize ratio, crop offsets h then w with up
to 10 retries, flip, then the photometric draws), including its integer ranges such as the hue
shift in [-hue_delta, hue_delta) with the upper end excluded.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ddpseg.data.formatting import Collect, DefaultFormatBundle, ImageToTensor, ToTensor
from ddpseg.data.image_io import DataError
from ddpseg.data.image_ops import (
    bgr2hsv,
    hsv2bgr,
    imflip,
    impad,
    impad_to_multiple,
    imnormalize,
    imrescale,
    imresize,
)
from ddpseg.data.loading import LoadAnnotations, LoadImageFromFile

Transform = Callable[[dict, Optional[np.random.Generator]], dict]


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, numbers.Number) for v in value)


def _scale_list(owner: str, img_scale: Any) -> list[tuple]:
    """A (w, h) pair or a list of pairs as a list of tuples; lists stand in for tuples because a config
    that went through JSON has no tuples left."""
    if _is_pair(img_scale):
        return [tuple(img_scale)]
    if isinstance(img_scale, (tuple, list)) and img_scale and all(_is_pair(s) for s in img_scale):
        return [tuple(s) for s in img_scale]
    raise ValueError(f"{owner}: img_scale must be a (w, h) pair or a list of pairs, got {img_scale!r}")


class Resize:
    """Resize image and label maps, the original's four ways of picking the scale:

    - ``ratio_range`` with one ``img_scale``: scale = int(img_scale * r), r ~ U(ratio_range);
    - ``ratio_range`` without ``img_scale``: the same around the image's own size;
    - several ``img_scale`` with ``multiscale_mode='range'``: long and short side drawn between them;
    - several ``img_scale`` with ``multiscale_mode='value'``: one of them.
    A ``results['scale']`` set before (by MultiScaleFlipAug) wins over all of these.

    ``keep_ratio`` resizes as large as fits within the scale (long side <= max, short side <= min,
    sizes rounded with int(x + 0.5)); otherwise to exactly (w, h). Images use bilinear, labels nearest.
    """

    def __init__(
        self,
        img_scale: Any = None,
        multiscale_mode: str = "range",
        ratio_range: Optional[Sequence[float]] = None,
        keep_ratio: bool = True,
        min_size: Optional[int] = None,
    ) -> None:
        self.img_scale = None if img_scale is None else _scale_list("Resize", img_scale)
        if ratio_range is not None:
            if self.img_scale is not None and len(self.img_scale) != 1:
                raise ValueError("Resize: ratio_range needs a single img_scale (or none)")
            if len(ratio_range) != 2 or ratio_range[0] > ratio_range[1]:
                raise ValueError(f"Resize: ratio_range must be (min, max) with min <= max, got {ratio_range!r}")
        elif multiscale_mode not in ("range", "value"):
            raise ValueError(f"Resize: multiscale_mode must be 'range' or 'value', got {multiscale_mode!r}")
        if self.img_scale is not None and multiscale_mode == "range" and ratio_range is None:
            if len(self.img_scale) > 2:
                raise ValueError("Resize: multiscale_mode='range' takes exactly two scales (lower, upper)")
        self.multiscale_mode = multiscale_mode
        self.ratio_range = ratio_range
        self.keep_ratio = keep_ratio
        self.min_size = min_size

    def _random_scale(self, results: dict, rng: np.random.Generator) -> tuple[tuple, Optional[int]]:
        if self.ratio_range is not None:
            if self.img_scale is None:
                h, w = results["img"].shape[:2]
                base = (w, h)
            else:
                base = self.img_scale[0]
            low, high = self.ratio_range
            ratio = rng.random() * (high - low) + low
            return (int(base[0] * ratio), int(base[1] * ratio)), None
        if self.img_scale is None:
            raise ValueError("Resize: no img_scale or ratio_range, and no scale set by MultiScaleFlipAug")
        if len(self.img_scale) == 1:
            return self.img_scale[0], 0
        if self.multiscale_mode == "range":
            longs = [max(s) for s in self.img_scale]
            shorts = [min(s) for s in self.img_scale]
            long_edge = int(rng.integers(min(longs), max(longs) + 1))
            short_edge = int(rng.integers(min(shorts), max(shorts) + 1))
            return (long_edge, short_edge), None
        idx = int(rng.integers(len(self.img_scale)))
        return self.img_scale[idx], idx

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        if "scale" not in results:
            results["scale"], results["scale_idx"] = self._random_scale(results, _rng_or_global(rng))
        img = results["img"]
        h, w = img.shape[:2]
        if self.keep_ratio:
            if self.min_size is not None:
                # Only the short bound is raised to min_size; the order of the pair does not matter.
                short = max(min(results["scale"]), self.min_size)
                results["scale"] = (short * h / w, short) if h > w else (short, short * w / h)
            img, _ = imrescale(img, results["scale"], "bilinear")
        else:
            img = imresize(img, results["scale"], "bilinear")
        new_h, new_w = img.shape[:2]
        w_scale, h_scale = new_w / w, new_h / h
        results.update(
            img=img,
            img_shape=img.shape,
            pad_shape=img.shape,
            scale_factor=np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32),
            keep_ratio=self.keep_ratio,
        )
        for key in results.get("seg_fields", []):
            if self.keep_ratio:
                results[key], _ = imrescale(results[key], results["scale"], "nearest")
            else:
                results[key] = imresize(results[key], results["scale"], "nearest")
        return results

    def __repr__(self) -> str:
        return (
            f"Resize(img_scale={self.img_scale}, multiscale_mode={self.multiscale_mode!r}, "
            f"ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"
        )


class RandomFlip:
    """Flip image and label maps with probability ``prob`` (or as ``results['flip']`` says)."""

    def __init__(self, prob: Optional[float] = None, direction: str = "horizontal", flip_ratio: Optional[float] = None):
        if flip_ratio is not None:  # the original's deprecated name for prob
            warnings.warn("RandomFlip: 'flip_ratio' is deprecated, use 'prob'", DeprecationWarning, stacklevel=2)
            prob = flip_ratio if prob is None else prob
        if prob is not None and not 0 <= prob <= 1:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}")
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"RandomFlip: direction must be 'horizontal' or 'vertical', got {direction!r}")
        self.prob = prob
        self.direction = direction

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        if "flip" not in results:
            if self.prob is None:
                raise ValueError("RandomFlip: no prob given and no flip set by MultiScaleFlipAug")
            results["flip"] = bool(_rng_or_global(rng).random() < self.prob)
        results.setdefault("flip_direction", self.direction)
        if results["flip"]:
            results["img"] = imflip(results["img"], results["flip_direction"])
            for key in results.get("seg_fields", []):
                results[key] = imflip(results[key], results["flip_direction"])
        return results

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, direction={self.direction!r})"


class Pad:
    """Pad image (``pad_val``) and label maps (``seg_pad_val``) at the bottom/right, to ``size`` = (h, w)
    or to the next multiple of ``size_divisor``."""

    def __init__(
        self,
        size: Optional[Sequence[int]] = None,
        size_divisor: Optional[int] = None,
        pad_val: Union[float, Sequence[float]] = 0,
        seg_pad_val: int = 255,
    ) -> None:
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad: give exactly one of size and size_divisor")
        self.size = size
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        if self.size is not None:
            img = impad(results["img"], self.size, self.pad_val)
        else:
            img = impad_to_multiple(results["img"], self.size_divisor, self.pad_val)
        results.update(img=img, pad_shape=img.shape, pad_fixed_size=self.size, pad_size_divisor=self.size_divisor)
        for key in results.get("seg_fields", []):
            results[key] = impad(results[key], img.shape[:2], self.seg_pad_val)
        return results

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, size_divisor={self.size_divisor}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"


class Normalize:
    """(img - mean) / std in float32, BGR -> RGB first when ``to_rgb``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True) -> None:
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)
        self.to_rgb = to_rgb

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        results["img"] = imnormalize(results["img"], self.mean, self.std, self.to_rgb)
        results["img_norm_cfg"] = dict(mean=self.mean, std=self.std, to_rgb=self.to_rgb)
        return results

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, to_rgb={self.to_rgb})"


class RandomCrop:
    """Crop ``crop_size`` = (h, w) at a random place (smaller images stay whole). With
    ``cat_max_ratio`` < 1 it draws up to 10 more places until the crop holds at least two classes and
    none covers ``cat_max_ratio`` of its labelled pixels; after 10 misses it keeps the last draw."""

    def __init__(self, crop_size: Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = 255) -> None:
        if len(crop_size) != 2 or crop_size[0] <= 0 or crop_size[1] <= 0:
            raise ValueError(f"RandomCrop: crop_size must be a positive (h, w), got {crop_size!r}")
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _bbox(self, shape: tuple, rng: np.random.Generator) -> tuple[int, int, int, int]:
        margin_h = max(shape[0] - self.crop_size[0], 0)
        margin_w = max(shape[1] - self.crop_size[1], 0)
        y = int(rng.integers(0, margin_h + 1))
        x = int(rng.integers(0, margin_w + 1))
        return y, y + self.crop_size[0], x, x + self.crop_size[1]

    def _balanced(self, seg: np.ndarray) -> bool:
        counts = np.bincount(seg.ravel(), minlength=256)
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        rng = _rng_or_global(rng)
        img = results["img"]
        y1, y2, x1, x2 = self._bbox(img.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._balanced(results["gt_semantic_seg"][y1:y2, x1:x2]):
                    break
                y1, y2, x1, x2 = self._bbox(img.shape, rng)
        results["img"] = img[y1:y2, x1:x2, ...]
        results["img_shape"] = results["img"].shape
        for key in results.get("seg_fields", []):
            results[key] = results[key][y1:y2, x1:x2, ...]
        return results

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class PhotoMetricDistortion:
    """Random brightness, contrast, saturation and hue, each applied with probability 0.5, in the
    original's order: brightness, [contrast if mode 1], saturation, hue, [contrast if mode 0], with the
    mode itself drawn after brightness. Pixel values go through float32, are clipped to [0, 255] and
    truncated back to uint8. Works on BGR uint8 images (hue/saturation via OpenCV's HSV, H in [0, 180))."""

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_lower, self.contrast_upper = contrast_range
        self.saturation_lower, self.saturation_upper = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return self._convert(img, alpha=rng.uniform(self.contrast_lower, self.contrast_upper))
        return img

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        rng = _rng_or_global(rng)
        img = results["img"]
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.integers(2) == 1
        if contrast_first:
            img = self._contrast(img, rng)
        if rng.integers(2):
            hsv = bgr2hsv(img)
            hsv[:, :, 1] = self._convert(
                hsv[:, :, 1], alpha=rng.uniform(self.saturation_lower, self.saturation_upper)
            )
            img = hsv2bgr(hsv)
        if rng.integers(2):
            hsv = bgr2hsv(img)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
            img = hsv2bgr(hsv)
        if not contrast_first:
            img = self._contrast(img, rng)
        results["img"] = img
        return results

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range=({self.contrast_lower}, {self.contrast_upper}), "
            f"saturation_range=({self.saturation_lower}, {self.saturation_upper}), hue_delta={self.hue_delta})"
        )


class MultiScaleFlipAug:
    """Run ``transforms`` once per (scale, flip, direction) and return every key as a list over them.

    Scales: ``img_scale`` as given; with ``img_ratios``, int(img_scale * r) for each ratio (or, without
    ``img_scale``, int(image size * r)). ``flip=True`` adds a flipped copy of each scale.
    """

    def __init__(
        self,
        transforms: Sequence[Union[Mapping, Transform]],
        img_scale: Any,
        img_ratios: Optional[Union[float, Sequence[float]]] = None,
        flip: bool = False,
        flip_direction: Union[str, Sequence[str]] = "horizontal",
    ) -> None:
        types = [t.get("type") if isinstance(t, Mapping) else type(t).__name__ for t in transforms]
        if flip and "RandomFlip" in types and "Pad" in types and types.index("Pad") < types.index("RandomFlip"):
            raise ValueError("MultiScaleFlipAug: Pad must come after RandomFlip when flip=True")
        self.transforms = Compose(transforms)
        if isinstance(img_ratios, numbers.Number):
            img_ratios = [img_ratios]
        self.img_ratios = None if img_ratios is None else [float(r) for r in img_ratios]
        if img_scale is None:
            if self.img_ratios is None:
                raise ValueError("MultiScaleFlipAug: give img_scale, img_ratios or both")
            self.img_scale = None
        elif self.img_ratios is not None and _is_pair(img_scale):
            self.img_scale = [(int(img_scale[0] * r), int(img_scale[1] * r)) for r in self.img_ratios]
        else:
            self.img_scale = _scale_list("MultiScaleFlipAug", img_scale)
        self.flip = flip
        self.flip_direction = [flip_direction] if isinstance(flip_direction, str) else list(flip_direction)
        if flip and "RandomFlip" not in types:
            warnings.warn("MultiScaleFlipAug: flip=True has no effect without RandomFlip in transforms", stacklevel=2)

    def scales_for(self, shape: tuple) -> list[tuple]:
        """The (w, h) scales used for an image of ``shape`` (h, w, ...)."""
        if self.img_scale is not None:
            return list(self.img_scale)
        h, w = shape[:2]
        return [(int(w * r), int(h * r)) for r in self.img_ratios]

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        augmented = []
        for scale in self.scales_for(results["img"].shape):
            for flip in [False, True] if self.flip else [False]:
                for direction in self.flip_direction:
                    one = dict(results, scale=scale, flip=flip, flip_direction=direction)
                    augmented.append(self.transforms(one, rng))
        return {key: [a[key] for a in augmented] for key in augmented[0]}

    def __repr__(self) -> str:
        return f"MultiScaleFlipAug(img_scale={self.img_scale}, img_ratios={self.img_ratios}, flip={self.flip}, transforms={self.transforms})"


# The one table from a config's ``type`` to a transform class.
TRANSFORMS: dict[str, type] = {
    "LoadImageFromFile": LoadImageFromFile,
    "LoadAnnotations": LoadAnnotations,
    "Resize": Resize,
    "RandomCrop": RandomCrop,
    "RandomFlip": RandomFlip,
    "PhotoMetricDistortion": PhotoMetricDistortion,
    "Normalize": Normalize,
    "Pad": Pad,
    "DefaultFormatBundle": DefaultFormatBundle,
    "ImageToTensor": ImageToTensor,
    "ToTensor": ToTensor,
    "Collect": Collect,
    "MultiScaleFlipAug": MultiScaleFlipAug,
}


def build_transform(cfg: Mapping) -> Transform:
    """One transform from a config dict such as ``dict(type='RandomFlip', prob=0.5)``."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ValueError(f"a transform config must be a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    name = kwargs.pop("type")
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform type {name!r}; known types: {', '.join(sorted(TRANSFORMS))}")
    cls = TRANSFORMS[name]
    params = inspect.signature(cls).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = ", ".join(p for p in params if p != "self") or "none"
        raise ValueError(f"{name}: unknown argument(s) {unknown}; accepted: {accepted}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
    return cls(**kwargs)


class Compose:
    """Apply transforms in order, each called as ``t(results, rng)``.

    A transform that fails for a reason other than a DataError (which already names its file) is
    reported with its name and the sample's file, so a crash inside a loader worker still says which
    image it was on.
    """

    def __init__(self, transforms: Sequence[Union[Mapping, Transform]]) -> None:
        if isinstance(transforms, (str, Mapping)) or not isinstance(transforms, Sequence):
            raise ValueError(f"a pipeline must be a list of transforms, got {type(transforms).__name__}")
        self.transforms: list[Transform] = []
        for t in transforms:
            if isinstance(t, Mapping):
                self.transforms.append(build_transform(t))
            elif callable(t):
                self.transforms.append(t)
            else:
                raise ValueError(f"a transform must be a config dict or a callable, got {t!r}")

    def __call__(self, results: dict, rng: Optional[np.random.Generator] = None) -> dict:
        for t in self.transforms:
            try:
                out = t(results, rng)
            except DataError:
                raise
            except Exception as e:
                where = results.get("filename") or results.get("img_info", {}).get("filename", "<no file>")
                raise DataError(f"{where}: {type(t).__name__} failed: {type(e).__name__}: {e}") from e
            if out is None:
                raise DataError(f"{results.get('filename', '<no file>')}: {type(t).__name__} returned None")
            results = out
        return results

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"    {t!r}\n" for t in self.transforms) + ")"


def build_pipeline(cfgs: Sequence[Union[Mapping, Transform]]) -> Compose:
    """A pipeline from a config's list of transform dicts (callables pass through)."""
    return Compose(cfgs)


def make_rng(seed: Optional[int] = None) -> np.random.Generator:
    """The generator for one sample: from ``seed``, or without one from numpy's global state, so that
    ``np.random.seed`` still makes a direct call reproducible."""
    return np.random.default_rng(np.random.randint(2**31) if seed is None else seed)


def _rng_or_global(rng: Optional[np.random.Generator]) -> np.random.Generator:
    return make_rng() if rng is None else rng
