import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ddpseg.data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    ADE20KDataset,
    CustomDataset,
    DataError,
    build_dataloader,
    build_dataset,
)
from ddpseg.data.cityscapes_labels import LABELS
from ddpseg.data.image_io import write_png_atomic
from tests.data.pipelines import ADE20K, ADE20K_TRAIN, CITYSCAPES, CITYSCAPES_TEST, CITYSCAPES_TRAIN, scaled

LOAD_BOTH = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]


def _raw(path):
    return np.array(Image.open(path))


def _cityscapes(root, part="train", pipeline=LOAD_BOTH, **kwargs):
    cfg = dict(CITYSCAPES[part], data_root=str(root), pipeline=pipeline, **kwargs)
    return build_dataset(cfg)


def test_cityscapes_layout_pairs_images_with_train_id_labels(cityscapes_root):
    ds = _cityscapes(cityscapes_root)
    assert len(ds) == 4 and ds.num_classes == 19 and ds.CLASSES == CITYSCAPES_CLASSES
    assert [i["filename"] for i in ds.img_infos] == sorted(i["filename"] for i in ds.img_infos)
    info = ds.img_infos[0]
    assert info["filename"] == "aachen/aachen_000000_000000_leftImg8bit.png"
    assert info["ann"]["seg_map"] == "aachen/aachen_000000_000000_gtFine_labelTrainIds.png"
    sample = ds[0]
    assert sample["img"].shape == (128, 256, 3) and sample["gt_semantic_seg"].dtype == np.uint8
    np.testing.assert_array_equal(sample["gt_semantic_seg"], _raw(os.path.join(ds.ann_dir, info["ann"]["seg_map"])))


def test_cityscapes_palette_matches_label_table():
    by_train_id = {label.train_id: label for label in LABELS if label.train_id != 255}
    assert tuple(by_train_id[i].name for i in range(19)) == CITYSCAPES_CLASSES
    assert tuple(by_train_id[i].color for i in range(19)) == CITYSCAPES_PALETTE
    assert len(ADE20K_CLASSES) == len(ADE20KDataset.PALETTE) == 150


def test_scaled_config_train_pipeline_gives_aligned_padded_batches(cityscapes_root):
    ds = _cityscapes(cityscapes_root, pipeline=scaled(CITYSCAPES_TRAIN, (256, 128), (64, 128)))
    for seed in range(4):
        s = ds[(seed % len(ds), seed)]
        assert s["img"].shape == (3, 64, 128) and s["img"].dtype == torch.float32
        assert s["gt_semantic_seg"].shape == (1, 64, 128) and s["gt_semantic_seg"].dtype == torch.int64
        values = set(s["gt_semantic_seg"].unique().tolist())
        assert values <= set(range(8)) | {255}
        meta = s["img_metas"]
        assert meta["img_shape"][:2] <= (64, 128) and meta["pad_shape"][:2] == (64, 128)


def test_published_base_configs_read_unchanged_and_give_crop_sized_samples(cityscapes_root, ade_root):
    cs = _cityscapes(cityscapes_root, pipeline=CITYSCAPES_TRAIN)
    s = cs[(0, 1)]
    assert s["img"].shape == (3, 512, 1024) and s["gt_semantic_seg"].shape == (1, 512, 1024)
    ade = build_dataset(dict(ADE20K["train"], data_root=str(ade_root)))
    s = ade[(0, 1)]
    assert s["img"].shape == (3, 512, 512) and s["gt_semantic_seg"].shape == (1, 512, 512)
    test = build_dataset(dict(CITYSCAPES["test"], data_root=str(cityscapes_root)), dict(test_mode=True))
    s = test[0]
    assert [t.shape for t in s["img"]] == [(3, 1024, 2048)]  # 128x256 grown to the (2048, 1024) bound
    assert s["img_metas"][0]["ori_shape"] == (128, 256, 3)


def test_ade20k_reduces_zero_label(ade_root):
    ds = build_dataset(dict(ADE20K["train"], data_root=str(ade_root), pipeline=[dict(type="LoadImageFromFile")] + ADE20K_TRAIN[1:2]))
    assert ds.reduce_zero_label and ds.num_classes == 150
    raw = _raw(os.path.join(ds.ann_dir, ds.img_infos[0]["ann"]["seg_map"]))
    assert 0 in raw  # the synthetic data has "other" pixels
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)
    np.testing.assert_array_equal(ds.get_gt_seg_map(0), expected)
    np.testing.assert_array_equal(ds[0]["gt_semantic_seg"], expected)


def test_split_file_selects_and_orders_images(cityscapes_root, tmp_path):
    split = tmp_path / "subset.txt"
    split.write_text("aachen/aachen_000000_000003\naachen/aachen_000000_000001\n\n")
    ds = _cityscapes(cityscapes_root, split=str(split))
    assert [i["filename"] for i in ds.img_infos] == [
        "aachen/aachen_000000_000003_leftImg8bit.png",
        "aachen/aachen_000000_000001_leftImg8bit.png",
    ]


def test_class_subset_builds_label_map_and_palette(cityscapes_root):
    ds = _cityscapes(cityscapes_root, classes=("sidewalk", "road"))
    assert ds.CLASSES == ("sidewalk", "road") and ds.num_classes == 2
    assert ds.PALETTE == (CITYSCAPES_PALETTE[1], CITYSCAPES_PALETTE[0])
    assert ds.label_map[0] == 1 and ds.label_map[1] == 0 and ds.label_map[2] == -1
    raw = _raw(os.path.join(ds.ann_dir, ds.img_infos[0]["ann"]["seg_map"]))
    expected = np.select([raw == 0, raw == 1], [1, 0], 255)
    np.testing.assert_array_equal(ds.get_gt_seg_map(0), expected)
    np.testing.assert_array_equal(ds[0]["gt_semantic_seg"], expected)
    with pytest.raises(ValueError, match="'tree'"):
        _cityscapes(cityscapes_root, classes=("road", "tree"))


def _folder(tmp_path, n=2, size=(20, 30), labels=None):
    """A user's own dataset: img/*.jpg with ann/*.png."""
    rng = np.random.default_rng(0)
    for i in range(n):
        (tmp_path / "img").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "img" / f"im{i}.jpg"), rng.integers(0, 255, size + (3,)).astype(np.uint8))
        label = rng.integers(0, 3, size).astype(np.uint8) if labels is None else labels[i]
        write_png_atomic(tmp_path / "ann" / f"im{i}.png", label)
    return dict(type="CustomDataset", data_root=str(tmp_path), img_dir="img", ann_dir="ann", pipeline=LOAD_BOTH,
                classes=["a", "b", "c"])


def test_custom_dataset_with_label_map_and_default_palette(tmp_path):
    labels = [np.array([[0, 1, 2, 5]] * 4, np.uint8)] * 2
    cfg = _folder(tmp_path, size=(4, 4), labels=labels)
    state = np.random.get_state()[1].copy()
    ds = build_dataset(dict(cfg, label_map={5: 0, 0: 1, 1: 2, 2: -1}))
    assert (np.random.get_state()[1] == state).all()  # the random palette leaves global state alone
    assert len(ds.PALETTE) == 3 and ds.PALETTE == build_dataset(cfg).PALETTE
    np.testing.assert_array_equal(ds.get_gt_seg_map(0), [[1, 2, 255, 0]] * 4)
    with pytest.raises(ValueError, match="`classes` is required"):
        build_dataset({k: v for k, v in cfg.items() if k != "classes"})
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['img_sufix'\]"):
        build_dataset(dict(cfg, img_sufix=".png"))


@pytest.mark.parametrize(
    "damage, match",
    [
        ("remove_label", "label files are missing: im1.png"),
        ("empty_dir", "no image files ending in '.jpg'"),
    ],
)
def test_build_time_errors_name_the_files(tmp_path, damage, match):
    cfg = _folder(tmp_path)
    if damage == "remove_label":
        os.remove(tmp_path / "ann" / "im1.png")
    else:
        cfg["img_suffix"] = ".jpg"
        for f in (tmp_path / "img").iterdir():
            f.rename(f.with_suffix(".jpeg"))
    with pytest.raises(DataError, match=match):
        build_dataset(cfg)


def test_split_errors_name_the_split(tmp_path):
    cfg = _folder(tmp_path)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty.txt: split file lists no images"):
        build_dataset(dict(cfg, split="empty.txt"))
    (tmp_path / "bad.txt").write_text("im0\nim7\n")
    with pytest.raises(DataError, match=r"1 images listed in .*bad.txt are missing: im7.jpg"):
        build_dataset(dict(cfg, split="bad.txt"))
    with pytest.raises(DataError, match="nope.txt: split file not found"):
        build_dataset(dict(cfg, split="nope.txt"))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate_image", r"im1.jpg: truncated or corrupt"),
        ("garbage_image", r"im1.jpg: not a readable image"),
        ("truncate_label", r"im1.png: truncated or corrupt"),
        ("label_size", r"im1.png: label map is 10x30 \(HxW\) but .*im1.jpg is 20x30"),
        ("label_values", r"im1.png: label values 7, 9 are outside the 3 classes"),
        ("rgb_label", r"im1.png: label map has 3 channels"),
    ],
)
def test_read_time_errors_name_the_file_and_problem(tmp_path, damage, match):
    cfg = _folder(tmp_path)
    img, ann = tmp_path / "img" / "im1.jpg", tmp_path / "ann" / "im1.png"
    if damage == "truncate_image":
        _truncate(img)
    elif damage == "garbage_image":
        img.write_bytes(b"not an image at all")
    elif damage == "truncate_label":
        _truncate(ann)
    elif damage == "label_size":
        write_png_atomic(ann, np.zeros((10, 30), np.uint8))
    elif damage == "label_values":
        label = np.zeros((20, 30), np.uint8)
        label[0, :3] = (7, 9, 255)  # 255 is ignore, the others are not classes
        write_png_atomic(ann, label)
    elif damage == "rgb_label":
        cv2.imwrite(str(ann), np.zeros((20, 30, 3), np.uint8))
    ds = build_dataset(cfg)
    ds[0]  # the intact sample reads fine
    with pytest.raises(DataError, match=match):
        ds[1]


def test_errors_in_loader_workers_still_name_the_file(tmp_path):
    cfg = _folder(tmp_path)
    _truncate(tmp_path / "img" / "im0.jpg")
    batches = iter(build_dataloader(build_dataset(cfg), 1, 1, shuffle=False, infinite=False))
    try:
        next(batches)
        raised = None
    except DataError as e:
        raised = str(e)
        # Its frames hold the loader iterator in a reference cycle; left to the garbage collector,
        # the iterator's worker shutdown would wait out torch's 5 s timeout.
        e.__traceback__ = None
    del batches
    assert raised is not None and "im0.jpg: truncated" in raised


def test_failures_inside_a_transform_name_transform_and_file(tmp_path):
    def broken(results, rng):
        raise RuntimeError("boom")

    ds = build_dataset(dict(_folder(tmp_path), pipeline=LOAD_BOTH + [broken]))
    with pytest.raises(DataError, match=r"im0.jpg: function failed: RuntimeError: boom"):
        ds[0]


def test_cityscapes_format_results_writes_label_ids(cityscapes_root, tmp_path):
    ds = _cityscapes(cityscapes_root, "val")
    preds = [np.array([[0, 18], [13, 5]], np.int64), np.full((2, 2), 10)]
    np.save(tmp_path / "p1.npy", preds[1])
    files = ds.format_results([preds[0], str(tmp_path / "p1.npy")], str(tmp_path / "out"))
    assert [os.path.basename(f) for f in files] == [
        "frankfurt_000000_000000_leftImg8bit.png",
        "frankfurt_000000_000001_leftImg8bit.png",
    ]
    out = Image.open(files[0])
    assert out.mode == "P"
    np.testing.assert_array_equal(np.array(out), [[7, 33], [26, 17]])  # road, bicycle, car, pole
    assert out.getpalette()[7 * 3 : 7 * 3 + 3] == [128, 64, 128]
    np.testing.assert_array_equal(np.array(Image.open(files[1])), np.full((2, 2), 23))  # sky
    with pytest.raises(ValueError, match="outside 0..18"):
        ds.format_results([np.full((2, 2), 19)], str(tmp_path / "bad"), indices=[0])


def test_ade20k_format_results_stores_one_based_classes(ade_root, tmp_path):
    ds = build_dataset(dict(ADE20K["val"], data_root=str(ade_root), pipeline=LOAD_BOTH))
    (path,) = ds.format_results([np.array([[0, 149]])], str(tmp_path), indices=[1])
    assert os.path.basename(path) == "ADE_val_00000002.png"
    np.testing.assert_array_equal(np.array(Image.open(path)), [[1, 150]])


def test_test_mode_dataset_without_labels(cityscapes_root):
    ds = _cityscapes(cityscapes_root, "val", pipeline=scaled(CITYSCAPES_TEST, (512, 256)), ann_dir=None, test_mode=True)
    s = ds[1]
    assert [t.shape for t in s["img"]] == [(3, 256, 512)]
    assert s["img_metas"][0]["ori_filename"] == "frankfurt/frankfurt_000000_000001_leftImg8bit.png"
    with pytest.raises(DataError, match="no labels"):
        ds.get_gt_seg_map(0)


def test_ade20k_class_subset_with_an_unmapped_raw_label_explains_mmsegs_label_map_order(tmp_path):
    from PIL import Image

    from ddpseg.data.synthetic import make_synthetic_ade20k

    root = make_synthetic_ade20k(tmp_path, num_train=1, num_val=1, size=(32, 48))
    ann = next((root / "annotations" / "training").glob("*.png"))
    label = np.array(Image.open(ann))
    label[0, 0] = 150  # the last ADE class: label_map (keys 0..149) never maps the raw value 150
    Image.fromarray(label).save(ann)
    cfg = dict(ADE20K["train"], data_root=str(root), classes=ADE20K_CLASSES[:3],
               pipeline=[dict(type="LoadImageFromFile")] + ADE20K_TRAIN[1:2])
    with pytest.raises(DataError, match=r"label values 149 are outside the 3 classes.*applied to the raw labels "
                                        r"before reduce_zero_label"):
        build_dataset(cfg)[0]
