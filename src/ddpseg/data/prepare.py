"""``ddpseg prepare cityscapes``: write the ``*_labelTrainIds.png`` files the Cityscapes dataset reads.

Two routes to the same pixels, picked per image:

- the polygon annotations (``*_gtFine_polygons.json``) drawn by ``cityscapesscripts``' json2labelImg
  with the train-id encoding, when that package is installed (what the original's tool does);
- otherwise the label-id maps of the download (``*_gtFine_labelIds.png``) mapped to train ids with
  the Cityscapes label table. Both give the same result: the label-id maps are the same polygons
  drawn with label ids.

Each file is written to a temporary name and renamed when complete, files already there are skipped,
so a run that was interrupted is finished by running it again.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import os.path as osp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from ddpseg.data.cityscapes_labels import ID_TO_TRAIN_ID
from ddpseg.data.image_io import TMP_MARKER, DataError, atomic_path, read_label, write_png_atomic

POLYGONS_SUFFIX = "_polygons.json"
LABEL_IDS_SUFFIX = "_labelIds.png"
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"
SPLITS = ("train", "val", "test")


@dataclass
class PrepareSummary:
    converted: int = 0
    skipped: int = 0  # already there from an earlier run
    from_polygons: int = 0  # of the converted, drawn by cityscapesscripts
    split_files: list[str] = field(default_factory=list)


def load_json2labelimg() -> Optional[Callable[[str, str, str], None]]:
    """cityscapesscripts' json2labelImg(json_path, out_png, encoding), or None if not installed."""
    try:
        module = importlib.import_module("cityscapesscripts.preparation.json2labelImg")
    except ImportError:
        return None
    return module.json2labelImg


def label_ids_to_train_ids(label_ids: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Map a Cityscapes label-id map to train ids (0..18, 255 for everything not trained on)."""
    train_ids = ID_TO_TRAIN_ID[label_ids]
    if (train_ids < 0).any():
        bad = sorted(set(np.unique(label_ids[train_ids < 0]).tolist()))
        raise DataError(f"{path}: values {bad} are not Cityscapes label ids (0..33)")
    return train_ids.astype(np.uint8)


def _convert_one(job: tuple[str, str, str]) -> str:
    """Write one train-id file; returns the route used. Runs in a pool worker."""
    route, source, target = job
    if route == "polygons":
        json2labelimg = load_json2labelimg()
        with atomic_path(target) as tmp:
            try:
                json2labelimg(source, str(tmp), "trainIds")
            except Exception as e:
                raise DataError(f"{source}: cityscapesscripts could not convert it ({type(e).__name__}: {e})") from None
    else:
        write_png_atomic(target, label_ids_to_train_ids(read_label(source), source))
    return route


def _find_sources(gt_root: str) -> dict[str, dict[str, str]]:
    """``{path prefix: {'polygons': json, 'label_ids': png}}`` for every annotated image, and
    removes temporaries an interrupted run left behind."""
    sources: dict[str, dict[str, str]] = {}
    for root, _dirs, files in os.walk(gt_root, followlinks=True):
        for name in files:
            path = osp.join(root, name)
            if name.startswith(".") and TMP_MARKER in name and TRAIN_IDS_SUFFIX[:-4] in name:
                os.remove(path)
            elif name.endswith(POLYGONS_SUFFIX):
                sources.setdefault(path[: -len(POLYGONS_SUFFIX)], {})["polygons"] = path
            elif name.endswith(LABEL_IDS_SUFFIX):
                sources.setdefault(path[: -len(LABEL_IDS_SUFFIX)], {})["label_ids"] = path
    return sources


def _plan(sources: dict[str, dict[str, str]], use_polygons: bool, force: bool) -> tuple[list, int]:
    jobs, skipped, unconvertible = [], 0, []
    for prefix, found in sorted(sources.items()):
        target = prefix + TRAIN_IDS_SUFFIX
        if not force and osp.exists(target):
            skipped += 1
        elif use_polygons and "polygons" in found:
            jobs.append(("polygons", found["polygons"], target))
        elif "label_ids" in found:
            jobs.append(("label_ids", found["label_ids"], target))
        else:
            unconvertible.append(found["polygons"])
    if unconvertible:
        raise DataError(
            f"{unconvertible[0]} and {len(unconvertible) - 1} other polygon files have no *{LABEL_IDS_SUFFIX} "
            "beside them; converting polygons needs cityscapesscripts (pip install cityscapesscripts)"
        )
    return jobs, skipped


def _write_split_files(data_root: str, gt_dir: str, prefixes: list[str]) -> list[str]:
    """``<split>.txt`` in ``data_root``: one ``<city>/<image name>`` per line, as the original's tool
    writes them (usable as a dataset's ``split``)."""
    written = []
    for split in SPLITS:
        split_root = osp.join(data_root, gt_dir, split)
        names = sorted(
            osp.relpath(p, split_root).replace(os.sep, "/")[: -len(f"_{gt_dir}")]
            for p in prefixes
            if p.startswith(split_root + os.sep) and p.endswith(f"_{gt_dir}")
        )
        if not names:
            continue
        path = osp.join(data_root, f"{split}.txt")
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(n + "\n" for n in names), encoding="utf-8")
        written.append(path)
    return written


def prepare_cityscapes(
    data_root: str,
    *,
    gt_dir: str = "gtFine",
    nproc: Optional[int] = None,
    force: bool = False,
    use_cityscapesscripts: Optional[bool] = None,
    progress: bool = True,
    write_splits: bool = True,
) -> PrepareSummary:
    """Write ``*_labelTrainIds.png`` next to every annotation under ``data_root/gt_dir``.

    Args:
        nproc: worker processes (default: all CPUs; 1 runs in this process).
        force: rewrite files that already exist.
        use_cityscapesscripts: draw from the polygon files with cityscapesscripts; default: when it is
            installed. Without it, the ``*_labelIds.png`` maps are converted.
        progress: show a progress bar.
        write_splits: also write ``train.txt`` / ``val.txt`` / ``test.txt`` in ``data_root``.
    """
    gt_root = osp.join(data_root, gt_dir)
    if not osp.isdir(gt_root):
        raise DataError(f"{gt_root}: annotation folder not found (expected the Cityscapes '{gt_dir}' folder)")
    if use_cityscapesscripts is None:
        use_cityscapesscripts = load_json2labelimg() is not None
    elif use_cityscapesscripts and load_json2labelimg() is None:
        raise ImportError("cityscapesscripts is not installed (pip install cityscapesscripts)")
    sources = _find_sources(gt_root)
    if not sources:
        raise DataError(f"{gt_root}: no *{POLYGONS_SUFFIX} or *{LABEL_IDS_SUFFIX} annotation files found")
    jobs, skipped = _plan(sources, use_cityscapesscripts, force)
    summary = PrepareSummary(skipped=skipped)
    nproc = max(1, min(nproc or os.cpu_count() or 1, len(jobs) or 1))
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(jobs), desc="labelTrainIds", unit="file", disable=not progress))
        if nproc == 1:
            routes = map(_convert_one, jobs)
        else:
            pool = stack.enter_context(multiprocessing.Pool(nproc))
            routes = pool.imap_unordered(_convert_one, jobs, chunksize=max(1, len(jobs) // (nproc * 8)))
        for route in routes:
            summary.converted += 1
            summary.from_polygons += route == "polygons"
            bar.update()
    if write_splits:
        summary.split_files = _write_split_files(data_root, gt_dir, list(sources))
    return summary
