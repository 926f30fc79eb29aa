"""Palettes, label colouring and overlays, uncertainty maps, image writing, training curves.

Every image here is RGB ``uint8`` (H, W, 3); conversion to OpenCV's BGR happens only
at the OpenCV calls. Label maps are integer (H, W) arrays of class indices.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Callable, Optional, Union

import cv2
import numpy as np

from .atomic import atomic_write
import torch
from PIL import Image

from ddpseg.evaluation.class_names import ADE20K_PALETTE, CITYSCAPES_PALETTE

PathLike = Union[str, "os.PathLike[str]"]
PaletteSpec = Union[str, "os.PathLike[str]", Sequence[Sequence[int]], np.ndarray, None]
ArrayLike = Union[np.ndarray, torch.Tensor]

_NAMED_PALETTES = {
    "cityscapes": CITYSCAPES_PALETTE,
    "ade": ADE20K_PALETTE,
    "ade20k": ADE20K_PALETTE,
}


# --------------------------------------------------------------------------- palettes


def random_palette(num_classes: int, seed: int = 42) -> np.ndarray:
    """Seeded random colours, equal to mmseg's for ``seed=42``; the global RNG is untouched."""
    # mmseg seeds the legacy global RNG with 42 and draws randint(0, 255); a private
    # RandomState with the same seed yields the same numbers.
    return np.random.RandomState(seed).randint(0, 255, size=(num_classes, 3)).astype(np.uint8)


def _read_palette_file(path: Path) -> list:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"palette file {path}: not a text file (expected .json or 'R G B' lines)") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"palette file {path}: invalid JSON ({e})") from None
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            row = [int(v) for v in line.split()]
        except ValueError:
            row = []
        if len(row) != 3:
            raise ValueError(
                f"palette file {path}, line {line_no}: expected 'R G B' integers, got {line!r}"
            )
        rows.append(row)
    return rows


def get_palette(palette: PaletteSpec, num_classes: Optional[int] = None) -> np.ndarray:
    """Resolve a palette to a (K, 3) ``uint8`` RGB array.

    Args:
        palette: ``'cityscapes'``, ``'ade'``/``'ade20k'`` (case-insensitive), a path to a
            ``.json`` list of ``[R, G, B]`` or a text file with one ``R G B`` per line,
            a sequence/array of RGB triples, or ``None``/``'random'`` for a seeded random
            palette (needs ``num_classes``).
        num_classes: K. A palette with more colours is cut to its first K; one with
            fewer is an error.
    """
    if palette is None or (isinstance(palette, str) and palette.lower() == "random"):
        if num_classes is None:
            raise ValueError("a random palette needs num_classes")
        return random_palette(num_classes)
    source = "palette"  # how the messages below name it
    if isinstance(palette, (str, os.PathLike)):
        key = os.fspath(palette)
        if isinstance(palette, str) and key.lower() in _NAMED_PALETTES:
            colours = _NAMED_PALETTES[key.lower()]
            source = f"palette {key!r}"
        elif Path(key).is_file():
            colours = _read_palette_file(Path(key))
            source = f"palette file {key}"
        else:
            raise ValueError(
                f"unknown palette {key!r}: expected one of {sorted(_NAMED_PALETTES)}, 'random', "
                "or an existing .json/.txt file of RGB triples"
            )
    else:
        colours = palette
    try:
        array = np.asarray(colours)
    except ValueError:  # ragged rows
        raise ValueError(f"{source} must be a list of [R, G, B] triples") from None
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"{source} must be a list of [R, G, B] triples, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
        raise ValueError(f"{source}: colours must be integers in 0..255")
    if num_classes is not None:
        if len(array) < num_classes:
            raise ValueError(
                f"{source} has {len(array)} colour{'' if len(array) == 1 else 's'} but {num_classes} "
                "classes were asked for: "
                f"{num_classes} colours are needed, one per class"
            )
        array = array[:num_classes]
    return array.astype(np.uint8)


# --------------------------------------------------------------------------- label maps


def _as_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def colorize(label_map: ArrayLike, palette: PaletteSpec) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) RGB; labels without a colour (ignore 255) are black."""
    labels = _as_numpy(label_map)
    if labels.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {labels.shape}")
    colours = get_palette(palette)
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    known = (labels >= 0) & (labels < len(colours))
    out[known] = colours[labels[known].astype(np.int64)]
    return out


def overlay(
    image_rgb: np.ndarray, label_map: ArrayLike, palette: PaletteSpec, opacity: float = 0.5
) -> np.ndarray:
    """Blend class colours over an image: ``image * (1 - opacity) + colour * opacity``.

    Same arithmetic as mmseg's ``show_result`` (float maths, then truncation to
    uint8), but in RGB. Unlike mmseg, which blends ignore pixels with black,
    pixels whose label has no colour (ignore 255) keep the image unchanged.
    """
    image = np.asarray(image_rgb)
    labels = _as_numpy(label_map)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label_map shape {labels.shape} does not match image {image.shape[:2]}")
    if not 0 < opacity <= 1:
        raise ValueError(f"opacity must be in (0, 1], got {opacity}")
    colours = get_palette(palette)
    blended = (image * (1 - opacity) + colorize(labels, colours) * opacity).astype(np.uint8)
    unpainted = ~((labels >= 0) & (labels < len(colours)))
    blended[unpainted] = image[unpainted]
    return blended


# --------------------------------------------------------------------------- uncertainty


def entropy(probs: ArrayLike, normalize: bool = False) -> ArrayLike:
    """Per-pixel Shannon entropy (nats) of class probabilities (C, H, W) -> (H, W).

    ``0 * log 0`` counts as 0. ``normalize=True`` divides by ``log C`` so the
    result lies in [0, 1]. A tensor gives a tensor on the same device, an array an array.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C, H, W), got shape {tuple(probs.shape)}")
    num_classes = probs.shape[0]
    if isinstance(probs, torch.Tensor):
        result = -torch.special.xlogy(probs, probs).sum(0)
    else:
        p = np.asarray(probs, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            result = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
    if normalize and num_classes > 1:
        result = result / np.log(num_classes)
    return result


def step_disagreement(step_argmaxes: Union[Sequence[ArrayLike], np.ndarray]) -> np.ndarray:
    """Fraction of the earlier diffusion steps whose label differs from the final step's.

    Input: T label maps (H, W), ordered first step to last (or a (T, H, W) array).
    Output: float32 (H, W) in [0, 1], over the T - 1 steps before the last; zero if T == 1.
    """
    maps = np.stack([_as_numpy(m) for m in step_argmaxes])
    if maps.ndim != 3 or len(maps) == 0:
        raise ValueError(f"step_argmaxes must be T >= 1 maps of shape (H, W), got {maps.shape}")
    if len(maps) == 1:
        return np.zeros(maps.shape[1:], dtype=np.float32)
    return (maps[:-1] != maps[-1]).mean(0).astype(np.float32)


def uncertainty_heatmap(
    values: ArrayLike,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    colormap: int = cv2.COLORMAP_INFERNO,
) -> np.ndarray:
    """Colour-map an (H, W) float map, with a colour bar on the right labelled max (top) / min.

    ``vmin``/``vmax`` default to the map's finite min/max; NaN is drawn as ``vmin``.
    Returns RGB uint8 of shape (H, W + bar panel width, 3). Labels are left out
    when the map is too short (< 24 px) to hold them.
    """
    v = _as_numpy(values).astype(np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be (H, W), got shape {v.shape}")
    finite = v[np.isfinite(v)]
    lo = float(vmin) if vmin is not None else float(finite.min()) if finite.size else 0.0
    hi = float(vmax) if vmax is not None else float(finite.max()) if finite.size else 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    levels = np.clip(np.nan_to_num((v - lo) * scale, nan=0.0), 0, 255).astype(np.uint8)

    height = v.shape[0]
    bar_width = max(4, height // 24)
    gap = max(2, bar_width // 2)
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(1.0, height / 512))
    texts = [f"{hi:.3g}", f"{lo:.3g}"]  # top, bottom
    sizes = [cv2.getTextSize(t, font, font_scale, 1) for t in texts]  # ((w, h), baseline)
    with_labels = height >= 24 and height >= 3 * max(h + base for (_, h), base in sizes)
    text_width = max(w for (w, _), _ in sizes) + 4 if with_labels else 0

    panel = np.full((height, gap + bar_width + text_width, 3), 255, np.uint8)
    gradient = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(bar_width, 1)
    panel[:, gap:gap + bar_width] = cv2.applyColorMap(gradient, colormap)
    if with_labels:
        x = gap + bar_width + 2
        for text, y in zip(texts, (sizes[0][0][1] + 1, height - sizes[1][1] - 1)):
            cv2.putText(panel, text, (x, y), font, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    bgr = np.concatenate([cv2.applyColorMap(levels, colormap), panel], axis=1)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- files


def _write_atomic(path: PathLike, write: Callable[[str], None]) -> Path:
    """Readers never see a half-written file, and an interrupted run leaves no partial output."""
    return atomic_write(path, lambda tmp: write(str(tmp)), keep_suffix=True)


# Formats OpenCV can write an 8-bit colour image to (not the gray-only .pgm/.pbm, nor the float .hdr/.pfm);
# image_extensions() keeps those this OpenCV build has a writer for.
_COLOUR_IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".jp2", ".avif", ".gif", ".ppm", ".pnm", ".sr", ".ras",
)


@functools.lru_cache(maxsize=None)
def image_extensions() -> tuple[str, ...]:
    """The file extensions :func:`save_image` can write an RGB image to with the installed OpenCV."""
    have_writer = getattr(cv2, "haveImageWriter", None)
    if have_writer is None:  # an OpenCV without the query: assume its usual formats
        return _COLOUR_IMAGE_EXTENSIONS
    return tuple(ext for ext in _COLOUR_IMAGE_EXTENSIONS if have_writer("x" + ext))


def check_image_extension(path: PathLike, what: str = "output file") -> Path:
    """Raise ``ValueError`` naming ``path`` unless its extension is one :func:`image_extensions` lists.

    A path without an extension passes: :func:`save_image` writes it as PNG.
    """
    path = Path(path)
    if path.suffix and path.suffix.lower() not in image_extensions():
        raise ValueError(
            f"{what} {path}: cannot write images with extension {path.suffix!r}; "
            f"use one of {' '.join(image_extensions())}"
        )
    return path


def save_image(path: PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 image atomically; the format follows the file extension (none: PNG).

    An extension OpenCV cannot write, or an image its encoder refuses, is a ``ValueError`` naming the path.
    """
    image = np.asarray(rgb)
    is_rgb = image.ndim == 3 and image.shape[2] == 3
    if image.dtype != np.uint8 or not (image.ndim == 2 or is_rgb):
        raise ValueError(
            f"{path}: expected (H, W, 3) or (H, W) uint8, got {image.shape} {image.dtype}"
        )
    ext = Path(path).suffix or ".png"
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(ext, data)
        reason = "the encoder failed"
    except cv2.error as err:  # OpenCV raises (rather than returning False) for an unknown extension
        ok, reason = False, (getattr(err, "err", None) or str(err)).strip().splitlines()[-1]
    if not ok:
        have_writer = getattr(cv2, "haveImageWriter", None)
        if have_writer is not None and not have_writer("x" + ext):
            raise ValueError(
                f"cannot write {path}: OpenCV has no writer for extension {ext!r}; "
                f"use one of {' '.join(image_extensions())}"
            )
        raise ValueError(
            f"cannot write {path}: OpenCV could not encode a {'x'.join(map(str, image.shape))} image "
            f"as {ext!r} ({reason})"
        )

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(encoded.tobytes())

    return _write_atomic(path, write)


def save_label_png(path: PathLike, label: ArrayLike, palette: PaletteSpec = None) -> Path:
    """Write class indices (0..255) as a PNG, atomically.

    With a palette the file is palettised ('P' mode: pixel values are the class
    indices, viewers show the colours); without, it is 8-bit grayscale.
    """
    labels = _as_numpy(label)
    if labels.ndim != 2:
        raise ValueError(f"{path}: label must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"{path}: label values must be in 0..255 for an 8-bit PNG, got "
            f"{labels.min()}..{labels.max()}"
        )
    image = Image.fromarray(labels.astype(np.uint8))
    if palette is not None:
        colours = np.zeros((256, 3), dtype=np.uint8)
        given = get_palette(palette)[:256]
        colours[: len(given)] = given
        image.putpalette(colours.reshape(-1).tolist())  # turns the 'L' image into 'P'
    return _write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


# --------------------------------------------------------------------------- training curves


def _load_records(source: Union[PathLike, Iterable[Mapping]]) -> list[Mapping]:
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    records = []
    with open(source) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}, line {line_no}: not a JSON object ({e})") from None
    return records


def _series(records: list[Mapping], key: str) -> tuple[list, list]:
    """(iterations, values) of the records holding a number under ``key``."""
    points = [(r["iter"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(
    jsonl_path_or_records: Union[PathLike, Iterable[Mapping]], out_png: PathLike
) -> Path:
    """Plot loss (all ``*loss*`` keys), lr and, when logged, validation mIoU against iteration.

    Records are JSON lines with ``"mode": "train"`` (``iter``, ``lr``, ``loss``, ...)
    or ``"mode": "val"`` (``iter``, ``mIoU``, ...). Uses the non-interactive Agg
    renderer, so it works without a display and leaves pyplot's state alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plot_training_curves needs matplotlib: pip install 'matplotlib>=3.6'"
        ) from e

    records = [r for r in _load_records(jsonl_path_or_records) if "iter" in r]
    train = [r for r in records if r.get("mode", "train") == "train"]
    val = [r for r in records if r.get("mode") == "val" and "mIoU" in r]
    loss_keys = sorted({k for r in train for k in r if "loss" in k}, key=lambda k: (k != "loss", k))
    has_lr = any("lr" in r for r in train)
    panels = ["loss"] if loss_keys else []
    panels += (["lr"] if has_lr else []) + (["mIoU"] if val else [])
    if not panels:
        raise ValueError(
            f"{jsonl_path_or_records}: no train loss/lr or val mIoU records with an 'iter'"
        )

    fig = Figure(figsize=(8, 2.6 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            for key in loss_keys:
                ax.plot(*_series(train, key), label=key, linewidth=1.5 if key == "loss" else 0.8)
            ax.legend(fontsize="small")
        elif panel == "lr":
            ax.plot(*_series(train, "lr"))
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:  # metrics are logged as fractions (as mmseg returns them); drawn in % like the printed tables
            iters, values = _series(val, "mIoU")
            ax.plot(iters, [100 * v for v in values], marker="o")
        ax.set_ylabel("mIoU (%)" if panel == "mIoU" else panel)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    return _write_atomic(out_png, lambda tmp: fig.savefig(tmp, format="png"))
