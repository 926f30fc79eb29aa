"""The Cityscapes label table: the 34 annotated label ids, their 19 training ids and their colours.

Facts of the dataset (they match ``cityscapesscripts.helpers.labels``), kept here so that preparing
labels and writing test-server files need no extra package.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int  # 255: not trained on, ignored in evaluation
    color: tuple[int, int, int]  # RGB


LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
)
# "license plate" (id -1) is never drawn into the label files, so it has no row here.
LICENSE_PLATE_COLOR = (0, 0, 142)


def _id_to_train_id() -> np.ndarray:
    table = np.full(256, -1, dtype=np.int16)  # -1: not a Cityscapes label id
    for label in LABELS:
        table[label.id] = label.train_id
    return table


def _train_id_to_id() -> np.ndarray:
    # Several ids share train id 255; the first of them, "unlabeled" (0), stands for it, as in
    # cityscapesscripts' trainId2label. Values that are no train id pass through unchanged.
    table = np.arange(256, dtype=np.uint8)
    for label in reversed(LABELS):
        table[label.train_id] = label.id
    return table


ID_TO_TRAIN_ID: np.ndarray = _id_to_train_id()
TRAIN_ID_TO_ID: np.ndarray = _train_id_to_id()
# The palette of the test-server PNGs: row = label id, then the license-plate colour (id -1).
LABEL_ID_PALETTE: np.ndarray = np.array([label.color for label in LABELS] + [LICENSE_PLATE_COLOR], dtype=np.uint8)
