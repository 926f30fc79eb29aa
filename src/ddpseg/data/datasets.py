"""Segmentation datasets laid out as the original expects: an image folder and a label folder whose
files pair up by name, optionally restricted by a split file.

``CustomDataset`` serves any such layout; ``CityscapesDataset`` and ``ADE20KDataset`` fix the names,
suffixes and label conventions of the two benchmarks. A dataset checks its files when it is built
(missing images or labels, empty splits) and each sample when it is read (unreadable or truncated
files, label and image sizes, label values), and every error names the file.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch.utils.data

from ddpseg.data.cityscapes_labels import LABEL_ID_PALETTE, TRAIN_ID_TO_ID
from ddpseg.data.image_io import DataError, image_size, write_png_atomic
from ddpseg.data.loading import LoadAnnotations
from ddpseg.data.transforms import Compose, make_rng

logger = logging.getLogger(__name__)

Palette = Sequence[Sequence[int]]
SampleKey = Union[int, tuple[int, int]]

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# The 150 ADE20K (SceneParse150) classes in label order 1..150 ("bed " keeps the trailing space of the
# original's list, which its printed tables show). Palette colours are RGB.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61),
    (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230),
    (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8),
    (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0),
    (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0),
    (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0),
    (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163),
    (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255),
    (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255),
    (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255),
    (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255),
    (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)


def _scan(folder: str, suffix: str) -> list[str]:
    """Paths relative to ``folder`` of the files below it whose names end in ``suffix``; hidden files
    (such as half-written temporaries) are left out."""
    found = []
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.endswith(suffix) and not name.startswith("."):
                found.append(osp.relpath(osp.join(root, name), folder).replace(os.sep, "/"))
    return found


def _read_lines(path: str, what: str) -> list[str]:
    if not osp.isfile(path):
        raise DataError(f"{path}: {what} not found")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _missing_error(folder: str, missing: list[str], what: str) -> DataError:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return DataError(f"{folder}: {len(missing)} {what} missing: {shown}")


class CustomDataset(torch.utils.data.Dataset):
    """Images ``img_dir/<name><img_suffix>`` with labels ``ann_dir/<name><seg_map_suffix>``.

    Args:
        pipeline: transform configs (or callables) applied to every sample.
        img_dir, ann_dir: folders, relative to ``data_root`` unless absolute. Without ``ann_dir`` the
            dataset has images only (for inference).
        img_suffix, seg_map_suffix: the file name endings that pair an image with its label.
        split: a text file (relative to ``data_root``) listing ``<name>`` per line; without it every
            file under ``img_dir`` ending in ``img_suffix`` is used, sorted by path.
        test_mode: samples go through the pipeline without their annotation info.
        ignore_index: the label value that marks pixels to ignore.
        reduce_zero_label: label 0 means "other" and becomes ``ignore_index``; k becomes k - 1 (only in
            :meth:`get_gt_seg_map`; the pipeline's LoadAnnotations has its own switch, as in the configs).
        classes: class names, or a text file with one name per line. For a dataset with built-in
            classes it must be a subset: the others become ignored pixels (through ``label_map``).
        palette: an RGB colour per class; by default the dataset's, or a fixed random one.
        label_map: ``{old id: new id}`` applied to every label map (-1 = ignore); derived from
            ``classes`` when those are a subset of the built-in ones.
    """

    CLASSES: Optional[tuple[str, ...]] = None
    PALETTE: Optional[tuple[tuple[int, int, int], ...]] = None

    def __init__(
        self,
        pipeline: Sequence[Any],
        img_dir: str,
        img_suffix: str = ".jpg",
        ann_dir: Optional[str] = None,
        seg_map_suffix: str = ".png",
        split: Optional[str] = None,
        data_root: Optional[str] = None,
        test_mode: bool = False,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        classes: Optional[Union[str, Sequence[str]]] = None,
        palette: Optional[Palette] = None,
        label_map: Optional[Mapping[int, int]] = None,
    ) -> None:
        def under_root(path: Optional[str]) -> Optional[str]:
            if path is None or data_root is None or osp.isabs(path):
                return path
            return osp.join(data_root, path)

        self.pipeline = Compose(pipeline)
        self.img_dir = under_root(img_dir)
        self.ann_dir = under_root(ann_dir)
        self.split = under_root(split)
        self.data_root = data_root
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
        self.test_mode = test_mode
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.CLASSES, self.PALETTE, self.label_map = self._classes_palette_label_map(classes, palette, label_map)
        self._gt_loader = LoadAnnotations(reduce_zero_label=reduce_zero_label)
        self.img_infos = self.load_annotations()
        logger.info("Loaded %d images from %s", len(self.img_infos), self.img_dir)

    # -- building ---------------------------------------------------------------------------------

    def _classes_palette_label_map(self, classes, palette, label_map):
        builtin_classes, builtin_palette = type(self).CLASSES, type(self).PALETTE
        if classes is None:
            names = builtin_classes
        elif isinstance(classes, str):
            names = tuple(_read_lines(classes, "class name file"))
        elif isinstance(classes, (list, tuple)):
            names = tuple(classes)
        else:
            raise ValueError(f"classes must be a list of names or a file path, got {type(classes).__name__}")
        if not names:
            raise ValueError(f"{type(self).__name__}: `classes` is required (a list of names or a file with one per line)")
        if label_map is not None:
            label_map = {int(k): int(v) for k, v in label_map.items()}
        if classes is not None and builtin_classes is not None and tuple(names) != builtin_classes:
            unknown = [c for c in names if c not in builtin_classes]
            if unknown:
                raise ValueError(f"{type(self).__name__}: classes {unknown} are not among its classes {builtin_classes}")
            if label_map is not None:
                raise ValueError("give either a subset of the built-in classes or a label_map, not both")
            label_map = {i: (names.index(c) if c in names else -1) for i, c in enumerate(builtin_classes)}
            if palette is None:
                palette = [builtin_palette[builtin_classes.index(c)] for c in names]
        if palette is None:
            palette = builtin_palette if builtin_palette is not None and len(builtin_palette) == len(names) else None
        if palette is None:
            # A fixed random palette (seed 42, as the original draws it), leaving the global state alone.
            palette = np.random.RandomState(42).randint(0, 255, size=(len(names), 3))
        palette = tuple(tuple(int(v) for v in color) for color in palette)
        if len(palette) != len(names) or any(len(color) != 3 for color in palette):
            raise ValueError(f"palette must have one RGB triple per class ({len(names)}), got {len(palette)} entries")
        return names, palette, label_map

    def load_annotations(self) -> list[dict]:
        """``[{'filename': <relative image path>, 'ann': {'seg_map': <relative label path>}}, ...]``."""
        if not osp.isdir(self.img_dir):
            raise DataError(f"{self.img_dir}: image folder not found")
        if self.split is not None:
            names = _read_lines(self.split, "split file")
            if not names:
                raise DataError(f"{self.split}: split file lists no images")
            images = [name + self.img_suffix for name in names]
            present = set(_scan(self.img_dir, self.img_suffix))
            missing = [img for img in images if img not in present]
            if missing:
                raise _missing_error(self.img_dir, missing, f"images listed in {self.split} are")
        else:
            images = sorted(_scan(self.img_dir, self.img_suffix))
            if not images:
                raise DataError(f"{self.img_dir}: no image files ending in {self.img_suffix!r}")
        infos = [{"filename": img} for img in images]
        if self.ann_dir is not None:
            if not osp.isdir(self.ann_dir):
                raise DataError(f"{self.ann_dir}: label folder not found")
            labels = set(_scan(self.ann_dir, self.seg_map_suffix))
            for info in infos:
                info["ann"] = {"seg_map": info["filename"][: -len(self.img_suffix)] + self.seg_map_suffix}
            missing = [i["ann"]["seg_map"] for i in infos if i["ann"]["seg_map"] not in labels]
            if missing:
                raise _missing_error(self.ann_dir, missing, "label files are")
        return infos

    # -- reading ----------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    def __len__(self) -> int:
        return len(self.img_infos)

    def image_path(self, idx: int) -> str:
        return osp.join(self.img_dir, self.img_infos[idx]["filename"])

    def get_ann_info(self, idx: int) -> dict:
        if "ann" not in self.img_infos[idx]:
            raise DataError(f"{self.image_path(idx)}: this dataset has no labels (no ann_dir)")
        return self.img_infos[idx]["ann"]

    def pre_pipeline(self, results: dict) -> None:
        """The keys every pipeline starts from."""
        results["seg_fields"] = []
        results["img_prefix"] = self.img_dir
        results["seg_prefix"] = self.ann_dir
        results["num_classes"] = self.num_classes
        results["ignore_index"] = self.ignore_index
        if self.label_map is not None:
            results["label_map"] = self.label_map

    def __getitem__(self, key: SampleKey) -> dict:
        """``dataset[idx]`` or ``dataset[(idx, seed)]``: the sample after the pipeline.

        The seed (the training sampler hands one out with each index) fixes the sample's random
        augmentation; without it the draw comes from numpy's global state.
        """
        idx, seed = key if isinstance(key, tuple) else (key, None)
        idx = int(idx)
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} samples")
        results = {"img_info": self.img_infos[idx]}
        if not self.test_mode and "ann" in self.img_infos[idx]:
            results["ann_info"] = self.img_infos[idx]["ann"]
        self.pre_pipeline(results)
        return self.pipeline(results, make_rng(seed))

    def get_gt_seg_map(self, idx: int) -> np.ndarray:
        """The label map of sample ``idx`` at its original size, as evaluation compares against it:
        ``label_map`` and ``reduce_zero_label`` applied, values checked."""
        results = {"img_info": self.img_infos[idx], "ann_info": self.get_ann_info(idx)}
        self.pre_pipeline(results)
        results["filename"] = self.image_path(idx)
        results["ori_shape"] = image_size(results["filename"])
        return self._gt_loader(results)["gt_semantic_seg"]

    def get_gt_seg_maps(self) -> Iterator[np.ndarray]:
        for idx in range(len(self)):
            yield self.get_gt_seg_map(idx)

    def format_results(
        self,
        results: Sequence[Any],
        imgfile_prefix: str,
        to_label_id: bool = True,
        indices: Optional[Sequence[int]] = None,
    ) -> list[str]:
        """Write each prediction (an (H, W) class map, or the path of one saved with ``np.save``) as
        ``imgfile_prefix/<image name>.png`` in the benchmark's submission format. ``indices`` are the
        dataset indices of ``results`` (default: all, in order). Returns the written paths."""
        indices = list(range(len(self))) if indices is None else list(indices)
        if len(results) != len(indices):
            raise ValueError(f"{len(results)} results for {len(indices)} images")
        written = []
        for result, idx in zip(results, indices):
            pred = np.load(result) if isinstance(result, (str, os.PathLike)) else np.asarray(result)
            if pred.ndim != 2 or not (np.issubdtype(pred.dtype, np.integer) or pred.dtype == np.bool_):
                raise ValueError(f"result for {self.image_path(idx)} must be an (H, W) integer map, got {pred.dtype} {pred.shape}")
            if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
                raise ValueError(f"result for {self.image_path(idx)} has values outside 0..{self.num_classes - 1}")
            array, palette = self._submission_map(pred.astype(np.uint8), to_label_id)
            base = osp.splitext(osp.basename(self.img_infos[idx]["filename"]))[0]
            path = osp.join(imgfile_prefix, base + ".png")
            write_png_atomic(path, array, palette=palette)
            written.append(path)
        return written

    def _submission_map(self, pred: np.ndarray, to_label_id: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """A prediction as the benchmark wants it stored, and the PNG palette (None: grayscale)."""
        raise NotImplementedError(f"{type(self).__name__} has no submission format")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(img_dir={self.img_dir!r}, ann_dir={self.ann_dir!r}, {len(self)} images, {self.num_classes} classes)"


class CityscapesDataset(CustomDataset):
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (see ``ddpseg prepare cityscapes``)."""

    CLASSES = CITYSCAPES_CLASSES
    PALETTE = CITYSCAPES_PALETTE

    def __init__(
        self,
        pipeline: Sequence[Any],
        img_dir: str,
        img_suffix: str = "_leftImg8bit.png",
        seg_map_suffix: str = "_gtFine_labelTrainIds.png",
        **kwargs: Any,
    ) -> None:
        super().__init__(pipeline, img_dir, img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def _submission_map(self, pred: np.ndarray, to_label_id: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The test server reads label ids (with ``to_label_id``), in a palette PNG coloured like the
        official labels."""
        return (TRAIN_ID_TO_ID[pred] if to_label_id else pred), LABEL_ID_PALETTE


class ADE20KDataset(CustomDataset):
    """ADE20K (SceneParse150): ``images/<split>/*.jpg`` with ``annotations/<split>/*.png`` where 0 is
    "other" (ignored) and 1..150 are the classes, hence ``reduce_zero_label``."""

    CLASSES = ADE20K_CLASSES
    PALETTE = ADE20K_PALETTE

    def __init__(
        self,
        pipeline: Sequence[Any],
        img_dir: str,
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        reduce_zero_label: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            pipeline,
            img_dir,
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )

    def _submission_map(self, pred: np.ndarray, to_label_id: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The benchmark stores classes as 1..150 (0 is "other")."""
        return pred + 1, None


DATASETS: dict[str, type] = {
    "CustomDataset": CustomDataset,
    "CityscapesDataset": CityscapesDataset,
    "ADE20KDataset": ADE20KDataset,
}
