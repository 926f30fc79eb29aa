"""The Python inference API: one image in, label map + uncertainty out.

    model = ddpseg.init_model("configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py", "ckpt.pth")
    result = ddpseg.inference(model, "street.png", steps=3, generator=torch.Generator().manual_seed(0))
    ddpseg.show_result(result, out_file="street_seg.png")

On a GPU, ``init_model(..., device="cuda")`` and ``torch.Generator(device="cuda")``: the generator must live
where the model runs.

The image goes through the config's test pipeline (``cfg.data.test.pipeline`` minus its file loader),
as mmseg's ``inference_segmentor`` does, and then through the test mode of ``model.test_cfg`` (whole or
sliding window; several scales/flips if the pipeline makes them). Image conventions: a path is read
like the datasets read it (OpenCV; grayscale, RGBA and 16-bit files become 8-bit colour); a numpy
array is taken as **BGR**, as ``cv2.imread`` returns it and as mmseg expects; a ``PIL.Image`` as RGB.
Returned and drawn images are RGB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.image_io import DataError, read_image
from .data.loader import collate
from .data.transforms import Compose, make_rng
from .evaluation.tta import grouped_softmax, merged_scores, undo_flip
from .models.segmentor import DDP, SamplerTrace, check_steps
from .visualize import PaletteSpec, entropy, get_palette, overlay, save_image, step_disagreement

__all__ = ["SegResult", "inference", "load_image", "show_result", "test_pipeline"]

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: PIL.Image.Image


@dataclass
class SegResult:
    """What :func:`inference` returns; arrays are numpy at the input image's size (H, W).

    Attributes:
        labels: (H, W) int64 class indices (the argmax the original computes).
        entropy: (H, W) float32, entropy in nats of the class probabilities (``probs``), 0 = certain.
        step_disagreement: (H, W) float32 in [0, 1], the share of the earlier diffusion steps whose
            label differs from the last step's (0 with one step).
        image: (H, W, 3) uint8 RGB, the input as read, for drawing.
        filename: the input's path, None for an in-memory image.
        num_classes: K.
        probs: (K, H, W) float32 class probabilities when asked for (``return_probs=True``): the mean
            over test-time augmentations of the softmax, or of the model's own step-averaged
            probabilities when it has ``accumulation=True``.
        palette: (K, 3) RGB palette of the model's dataset (from the checkpoint or the config), if known.
    """

    labels: np.ndarray
    entropy: np.ndarray
    step_disagreement: np.ndarray
    image: np.ndarray
    filename: Optional[str]
    num_classes: int
    probs: Optional[np.ndarray] = None
    palette: Optional[np.ndarray] = None


# --------------------------------------------------------------------------- images


def _to_uint8_bgr(array: np.ndarray, name: str) -> np.ndarray:
    """An in-memory image (BGR / gray / BGRA; uint8, uint16 or float in 0..255) as (H, W, 3) uint8 BGR."""
    img = np.asarray(array)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise DataError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(f"{name}: image is empty ({img.shape[0]}x{img.shape[1]})")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)  # what OpenCV does when it reads a 16-bit file as 8-bit colour
    elif np.issubdtype(img.dtype, np.floating):
        finite = img[np.isfinite(img)]
        if finite.size != img.size or finite.min() < 0 or finite.max() > 255:
            raise DataError(f"{name}: float image values must be finite and within 0..255")
        if 0 < finite.max() <= 1.0:
            raise DataError(f"{name}: float image looks scaled to 0..1; multiply by 255 (images are 0..255)")
        img = img.astype(np.float32)
    elif img.dtype != np.uint8:
        raise DataError(f"{name}: unsupported image dtype {img.dtype}; expected uint8, uint16 or float")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]  # alpha dropped, as OpenCV's colour decoding does
    return np.ascontiguousarray(img)


def load_image(image: ImageInput) -> tuple[np.ndarray, Optional[str]]:
    """(BGR (H, W, 3) image, filename or None) from a path, a BGR numpy array or a PIL image."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder, not an image file")
        return read_image(path), path  # raises DataError naming the file
    if isinstance(image, torch.Tensor):
        raise TypeError("pass an image path, a numpy array (BGR) or a PIL image, not a tensor")
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL.Image
        if image.mode.startswith("I"):  # 16/32-bit gray: keep the depth, scaled like a 16-bit file
            array = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        else:
            array = np.asarray(image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB"))
        if array.ndim == 3:
            array = array[:, :, [2, 1, 0] + list(range(3, array.shape[2]))]  # RGB(A) -> BGR(A)
        return _to_uint8_bgr(array, "<PIL image>"), getattr(image, "filename", None) or None
    if isinstance(image, np.ndarray):
        return _to_uint8_bgr(image, "<array>"), None
    raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, a BGR array or a PIL image")


# --------------------------------------------------------------------------- pipeline


def test_pipeline(cfg: Any) -> Compose:
    """The config's test pipeline without its leading file loader (images arrive already loaded)."""
    try:
        steps = list(cfg["data"]["test"]["pipeline"])
    except (KeyError, TypeError):
        raise ValueError("the model's config has no data.test.pipeline; inference needs it to prepare images") from None
    if steps and isinstance(steps[0], dict) and steps[0].get("type") == "LoadImageFromFile":
        steps = steps[1:]
    return Compose(steps)


def _prepare(model: DDP, bgr: np.ndarray, filename: Optional[str]) -> dict:
    name = filename or "<in-memory image>"
    results = dict(
        img=bgr,
        filename=filename,
        ori_filename=filename,
        img_shape=bgr.shape,
        ori_shape=bgr.shape,
        pad_shape=bgr.shape,
        scale_factor=1.0,
        img_norm_cfg=dict(mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), to_rgb=False),
    )
    try:
        sample = test_pipeline(model.cfg)(results, make_rng(0))
    except DataError as err:
        h, w = bgr.shape[:2]
        raise DataError(f"{name} ({h}x{w} pixels) cannot go through the test pipeline: {err}") from None
    if not isinstance(sample.get("img"), list):  # a pipeline without MultiScaleFlipAug: one copy
        sample = {key: [value] for key, value in sample.items()}
    return collate([sample])


def _scores_with_steps(model: DDP, steps: Optional[int], noise: Optional[Tensor], generator) -> Any:
    """``logits_fn`` giving the model's output stacked with every diffusion step's logits (resized alike)."""

    def logits_fn(img: Tensor) -> Tensor:
        trace = SamplerTrace()
        out = model.sample_logits(img, steps=steps, noise=noise, generator=generator, trace=trace)
        per_step = []
        for logits in trace.logits:
            # (randsteps·B, K, h, w) -> mean over the random repeats, as the model's own output
            logits = logits.reshape(-1, img.shape[0], *logits.shape[1:]).mean(0)
            per_step.append(F.interpolate(logits, img.shape[2:], mode="bilinear", align_corners=model.align_corners))
        return torch.cat([out, *per_step], dim=1)

    return logits_fn


def _default_palette(model: DDP) -> Optional[np.ndarray]:
    if getattr(model, "palette", None) is not None:
        return get_palette(model.palette, model.num_classes)
    from .data.datasets import DATASETS

    dataset_type = model.cfg.get("data", {}).get("test", {}).get("type")
    palette = getattr(DATASETS.get(dataset_type), "PALETTE", None)
    return get_palette(palette) if palette is not None and len(palette) == model.num_classes else None


@torch.no_grad()
def inference(
    model: DDP,
    image: ImageInput,
    steps: Optional[int] = None,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    return_probs: bool = False,
) -> SegResult:
    """Segment one image with a model from :func:`ddpseg.init_model`.

    Args:
        model: the segmentor; its ``cfg`` supplies the test pipeline, ``test_cfg`` the mode.
        image: a path, a BGR numpy array (uint8, uint16, float 0..255; gray and BGRA accepted) or a PIL image.
        steps: diffusion steps (default: the model's ``timesteps``); more steps, no retraining.
        noise: the initial map, shape (randsteps, C, h/4, w/4) for the resized image (whole mode, one
            test-time copy only). Default: drawn from ``generator``.
        generator: a ``torch.Generator`` on the model's device for the noise; default torch's global RNG.
        return_probs: also return the (K, H, W) class probabilities.
    """
    if not hasattr(model, "cfg"):
        raise ValueError("the model has no .cfg; build it with ddpseg.init_model(config, checkpoint)")
    if steps is not None:
        check_steps(steps)
    device = next(model.parameters()).device
    if generator is not None and generator.device.type != device.type:
        # torch would only say so at the first noise draw, after the encoder ran, naming neither
        raise ValueError(f"generator is on {generator.device} but the model on {device}: the noise is drawn where "
                         f"the model runs; pass torch.Generator(device='{device}').manual_seed(...)")
    bgr, filename = load_image(image)
    batch = _prepare(model, bgr, filename)
    imgs, metas = batch["img"], batch["img_metas"]
    if noise is not None and (len(imgs) > 1 or model.test_cfg.get("mode", "whole") != "whole"):
        raise ValueError("noise= needs test_cfg mode 'whole' and one test-time copy (each window/copy draws its own)")
    logits_fn = _scores_with_steps(model, steps, noise, generator)
    k = model.num_classes
    voted = probs = step_probs = None
    for img, meta in zip(imgs, metas):
        scores = merged_scores(logits_fn, img.to(device), meta, model.test_cfg, align_corners=model.align_corners)
        final = scores[:, :k]
        aug_voted = undo_flip(F.softmax(final, dim=1), meta)  # the original's (softmax even of probabilities)
        aug_probs = undo_flip(final, meta) if model.accumulation else aug_voted
        aug_steps = undo_flip(grouped_softmax(scores[:, k:], k), meta)
        voted = aug_voted if voted is None else voted + aug_voted
        probs = aug_probs if probs is None else probs + aug_probs
        step_probs = aug_steps if step_probs is None else step_probs + aug_steps
    n = len(imgs)
    voted, probs, step_probs = voted[0] / n, probs[0] / n, step_probs[0] / n
    step_labels = step_probs.view(-1, k, *step_probs.shape[1:]).argmax(dim=1).cpu().numpy()
    return SegResult(
        labels=voted.argmax(dim=0).cpu().numpy().astype(np.int64),
        entropy=entropy(probs).float().cpu().numpy(),
        step_disagreement=step_disagreement(step_labels),
        image=np.ascontiguousarray(bgr[:, :, ::-1]).astype(np.uint8),
        filename=filename,
        num_classes=k,
        probs=probs.float().cpu().numpy() if return_probs else None,
        palette=_default_palette(model),
    )


def show_result(
    result: Union[SegResult, np.ndarray, Tensor],
    image: Optional[ImageInput] = None,
    palette: PaletteSpec = None,
    opacity: float = 0.5,
    out_file: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> np.ndarray:
    """Draw a segmentation over its image; returns the RGB overlay and writes it to ``out_file`` if given.

    ``result`` is a :class:`SegResult` or an (H, W) label map. ``image`` defaults to the result's own
    image (a path, BGR array or PIL image otherwise). ``palette`` (a name such as ``'cityscapes'``,
    ``'ade'``, a file or RGB triples) defaults to the result's, else a fixed random one.
    """
    if isinstance(result, SegResult):
        labels, rgb = result.labels, result.image
        palette = result.palette if palette is None else palette
        num_classes: Optional[int] = result.num_classes
    else:
        labels = result.detach().cpu().numpy() if isinstance(result, Tensor) else np.asarray(result)
        labels = labels[0] if labels.ndim == 3 and labels.shape[0] == 1 else labels
        rgb, num_classes = None, None
    if image is not None:
        bgr, _ = load_image(image)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1]).astype(np.uint8)
    if rgb is None:
        raise ValueError("show_result needs the image when given a bare label map")
    if palette is None:
        palette = get_palette(None, num_classes or int(labels.max()) + 1)
    drawn = overlay(rgb, labels, palette, opacity)
    if out_file is not None:
        save_image(out_file, drawn)
    return drawn

