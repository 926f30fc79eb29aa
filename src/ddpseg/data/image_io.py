"""Reading and writing image and label files, with errors that name the file.

Images are decoded the way the original's loader does it: OpenCV by default (BGR channel order, EXIF
orientation applied), Pillow on request. Label maps are decoded with Pillow in "unchanged" mode, so a
palette PNG gives its palette indices, not colours.

A decoder may hand back a partly decoded picture for a file that was cut short; we look for the
format's end marker first and let Pillow judge any file that lacks it, so a truncated file fails
loudly instead of becoming a grey-bottomed training sample.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

PathLike = Union[str, "os.PathLike[str]"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"

TMP_MARKER = ".tmp-"  # in the names of atomic_path's temporaries

_CV2_FLAGS = {
    "color": cv2.IMREAD_COLOR,
    "grayscale": cv2.IMREAD_GRAYSCALE,
    "unchanged": cv2.IMREAD_UNCHANGED,
}
DECODE_BACKENDS = ("cv2", "pillow")


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent. The message names the file."""


def read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def _check_complete(content: bytes, path: PathLike) -> None:
    """Raise DataError if an encoded PNG/JPEG was cut short."""
    if not content:
        raise DataError(f"{path}: file is empty")
    if content.startswith(_PNG_SIGNATURE):
        complete = content.endswith(_PNG_END)
    elif content.startswith(_JPEG_START):
        complete = content.rstrip(b"\x00\r\n ").endswith(_JPEG_END)
    else:
        return
    if complete:
        return
    # No end marker: a few writers append trailers, so let a full decode decide.
    try:
        with Image.open(io.BytesIO(content)) as im:
            im.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError or ValueError here
        raise DataError(f"{path}: truncated or corrupt image file ({e})") from None


def decode_image(content: bytes, path: PathLike, flag: str = "color", backend: str = "cv2") -> np.ndarray:
    """Decode image bytes like the original's loader: colour images come back in BGR order."""
    if flag not in _CV2_FLAGS:
        raise ValueError(f"color_type must be one of {sorted(_CV2_FLAGS)}, got {flag!r}")
    if backend not in DECODE_BACKENDS:
        raise ValueError(f"imdecode_backend must be one of {DECODE_BACKENDS}, got {backend!r}")
    _check_complete(content, path)
    if backend == "cv2":
        img = cv2.imdecode(np.frombuffer(content, np.uint8), _CV2_FLAGS[flag])
        if img is None:
            raise DataError(f"{path}: not a readable image (OpenCV could not decode it)")
        return img
    try:
        with Image.open(io.BytesIO(content)) as im:
            return _pillow_to_array(im, flag)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _pillow_to_array(im: Image.Image, flag: str) -> np.ndarray:
    if flag == "unchanged":
        array = np.array(im)
        if array.ndim == 3 and array.shape[2] >= 3:
            array[:, :, :3] = array[:, :, 2::-1]  # RGB -> BGR, alpha untouched
        return array
    im = ImageOps.exif_transpose(im)
    if flag == "grayscale":
        return np.array(im.convert("L"))
    if im.mode == "LA":
        # Converting LA straight to RGB paints transparent pixels black; the original pastes onto a
        # neutral grey instead.
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (124, 117, 104))
        im.paste(rgba, mask=rgba.split()[3])
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.array(im)[:, :, ::-1])


def read_image(path: PathLike, flag: str = "color", backend: str = "cv2") -> np.ndarray:
    """Read an image file (BGR for colour), raising DataError naming ``path`` on any problem."""
    return decode_image(read_bytes(path), path, flag=flag, backend=backend)


def read_label(path: PathLike, backend: str = "pillow") -> np.ndarray:
    """Read a label map as an (H, W) uint8 array of class indices.

    Raises DataError for a multi-channel file (a colour-coded label must be converted to indices
    first) and for values above 255 (which a uint8 cast would silently wrap).
    """
    label = decode_image(read_bytes(path), path, flag="unchanged", backend=backend)
    if label.ndim == 3:
        if label.shape[2] != 1:
            raise DataError(
                f"{path}: label map has {label.shape[2]} channels; expected a single-channel "
                "(grayscale or palette) PNG of class indices"
            )
        label = label[:, :, 0]
    if label.dtype != np.uint8:
        if label.size and (label.max() > 255 or label.min() < 0):
            raise DataError(
                f"{path}: label values span {label.min()}..{label.max()}; expected class indices in 0..255"
            )
        label = label.astype(np.uint8)
    return label


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1) if im.format == "JPEG" else 1
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    # EXIF orientations 5-8 are rotated by 90 degrees: OpenCV's decoder swaps the sides.
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` to write to; on success it is renamed to
    ``path`` in one step, on failure removed. Readers thus see the file complete or not at all, and
    an interrupted run leaves no half-written file under the real name. The temporary keeps the
    suffix so that writers that pick the format from it still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}{TMP_MARKER}{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_png_atomic(path: PathLike, array: np.ndarray, palette: Optional[Sequence[Sequence[int]]] = None) -> None:
    """Write ``array`` (H, W) uint8 as a PNG at ``path`` (atomically, see :func:`atomic_path`),
    as a palette image when ``palette`` (RGB rows) is given."""
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if palette is not None:
        image = image.convert("P")
        image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
