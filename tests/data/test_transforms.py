import cv2
import numpy as np
import pytest
import torch

from ddpseg.data.transforms import (
    MultiScaleFlipAug,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    Resize,
    build_pipeline,
    build_transform,
)
from tests.data.pipelines import CITYSCAPES_TEST, scaled
from tests.data.rngs import RecordingRng, ScriptedRng

COLOURS = np.array([[0, 0, 200], [0, 200, 0], [200, 0, 0], [200, 200, 0], [0, 200, 200], [200, 0, 200], [90, 90, 90]], np.uint8)


def _blocks(h, w, block, seed=0):
    """A label of random classes in block x block squares, and an image that shows each class in
    its own colour: the image says what the label should be at every pixel."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(COLOURS), size=(-(-h // block), -(-w // block))).astype(np.uint8)
    label = np.kron(coarse, np.ones((block, block), np.uint8))[:h, :w]
    return COLOURS[label], label


def _label_from_image(img):
    """The class whose colour a pixel shows exactly, 255 for black (padding), -1 where bilinear
    resizing blended colours at a block edge."""
    palette = np.concatenate([COLOURS, [[0, 0, 0]]]).astype(np.int64)
    keys = palette @ np.array([65536, 256, 1])
    order = np.argsort(keys)
    pixel_keys = img.astype(np.int64) @ np.array([65536, 256, 1])
    pos = np.clip(np.searchsorted(keys[order], pixel_keys), 0, len(keys) - 1)
    cls = order[pos]
    out = np.where(keys[cls] == pixel_keys, cls, -1)
    out[out == len(COLOURS)] = 255
    return out


def _agreement(img, label):
    """Share of exactly coloured pixels whose label matches, and the share of such pixels."""
    decoded = _label_from_image(img)
    exact = decoded >= 0
    return (decoded[exact] == label[exact]).mean(), exact.mean()


def _sample(img, label):
    return {"img": img, "gt_semantic_seg": label, "seg_fields": ["gt_semantic_seg"], "img_shape": img.shape}


GEOMETRIC = [
    dict(type="Resize", img_scale=(256, 128), ratio_range=(0.5, 2.0)),
    dict(type="RandomCrop", crop_size=(96, 160), cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="Pad", size=(96, 160), pad_val=0, seg_pad_val=255),
]


@pytest.mark.parametrize("upto", range(1, len(GEOMETRIC) + 1))
def test_geometric_transforms_move_image_and_label_together(upto):
    img, label = _blocks(128, 256, block=16)
    pipeline = build_pipeline(GEOMETRIC[:upto])
    flips = set()
    for seed in range(8):
        out = pipeline(_sample(img.copy(), label.copy()), np.random.default_rng(seed))
        assert out["img"].shape[:2] == out["gt_semantic_seg"].shape
        agree, exact = _agreement(out["img"], out["gt_semantic_seg"])
        assert exact > 0.5 and agree > 0.98, f"seed {seed}: only {agree:.1%} of pixels agree"
        flips.add(out.get("flip"))
        if upto <= 2:  # the mirrored image would not match: the check has teeth
            assert _agreement(out["img"][:, ::-1], out["gt_semantic_seg"])[0] < 0.7
    if upto >= 3:
        assert flips == {True, False}


def test_resize_ratio_range_draws_one_ratio_and_keeps_aspect():
    rng = ScriptedRng([("random", (), 0.25)])  # ratio = 0.5 + 0.25 * 1.5 = 0.875
    out = Resize(img_scale=(2048, 1024), ratio_range=(0.5, 2.0))(_sample(*_blocks(1024, 2048, 64)), rng)
    assert out["scale"] == (1792, 896)
    assert out["img"].shape == (896, 1792, 3) and out["gt_semantic_seg"].shape == (896, 1792)
    np.testing.assert_allclose(out["scale_factor"], [0.875] * 4)


def test_resize_uses_bilinear_for_images_and_nearest_for_labels():
    img, label = _blocks(40, 60, 4)
    out = Resize(img_scale=(97, 61), keep_ratio=False)(_sample(img, label))
    np.testing.assert_array_equal(out["img"], cv2.resize(img, (97, 61), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out["gt_semantic_seg"], cv2.resize(label, (97, 61), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize(
    "shape, img_scale, expected",
    [((1024, 2048), (2048, 1024), (1024, 2048)), ((512, 683), (2048, 512), (512, 683)), ((375, 500), (2048, 512), (512, 683))],
)
def test_test_time_resize_sizes_are_deterministic(shape, img_scale, expected):
    tta = MultiScaleFlipAug(transforms=[dict(type="Resize", keep_ratio=True)], img_scale=img_scale)
    out = tta({"img": np.zeros(shape + (3,), np.uint8)})
    assert [im.shape[:2] for im in out["img"]] == [expected]


def test_multi_scale_flip_aug_makes_every_ratio_and_flip():
    img, _ = _blocks(128, 256, 8)
    ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    tta = build_pipeline(scaled(CITYSCAPES_TEST, (256, 128), img_ratios=ratios, flip=True)[1:])
    out = tta({"img": img, "filename": "x.png", "ori_filename": "x.png", "ori_shape": img.shape, "img_shape": img.shape,
               "pad_shape": img.shape, "scale_factor": 1.0, "img_norm_cfg": {}})
    sizes = [tuple(t.shape[1:]) for t in out["img"]]
    expected = [(int(128 * r), int(256 * r)) for r in ratios for _ in (0, 1)]
    assert sizes == expected
    assert [m["flip"] for m in out["img_metas"]] == [False, True] * 6
    # the flipped copy is the mirror image of the unflipped one
    torch.testing.assert_close(out["img"][1], out["img"][0].flip(-1))


def test_random_crop_retries_ten_times_then_keeps_last_draw():
    img = np.zeros((64, 64, 3), np.uint8)
    rng = RecordingRng(0)
    RandomCrop((32, 32), cat_max_ratio=0.75)(_sample(img, np.zeros((64, 64), np.uint8)), rng)
    assert [c[1] for c in rng.calls] == [(0, 33), (0, 33)] * 11  # offset h then w, 1 + 10 draws
    rng = RecordingRng(0)
    _, balanced = _blocks(64, 64, 4)
    RandomCrop((32, 32), cat_max_ratio=0.75)(_sample(img, balanced), rng)
    assert len(rng.calls) == 2


def test_random_crop_ignores_ignore_index_when_judging_balance():
    label = np.full((32, 32), 255, np.uint8)
    label[:, :4] = 1  # one class plus ignore: never balanced
    rng = RecordingRng(0)
    RandomCrop((16, 16), cat_max_ratio=0.75)(_sample(np.zeros((32, 32, 3), np.uint8), label), rng)
    assert len(rng.calls) == 22


def test_flip_follows_prob():
    img, label = _blocks(8, 8, 2)
    assert RandomFlip(prob=0.5)(_sample(img, label), ScriptedRng([("random", (), 0.49)]))["flip"] is True
    assert RandomFlip(prob=0.5)(_sample(img, label), ScriptedRng([("random", (), 0.5)]))["flip"] is False


def test_pad_fills_image_with_zero_and_label_with_255():
    out = Pad(size=(10, 12), pad_val=0, seg_pad_val=255)(_sample(np.full((7, 9, 3), 5.0, np.float32), np.ones((7, 9), np.uint8)))
    assert out["img"].shape == (10, 12, 3) and out["pad_shape"] == (10, 12, 3)
    assert (out["img"][7:] == 0).all() and (out["img"][:, 9:] == 0).all()
    assert (out["gt_semantic_seg"][7:] == 255).all() and (out["gt_semantic_seg"][:, 9:] == 255).all()
    assert (out["gt_semantic_seg"][:7, :9] == 1).all()


def _convert(img, alpha=1.0, beta=0.0):
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def test_photometric_distortion_draws_in_original_order_contrast_last():
    img = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    rng = ScriptedRng([
        ("integers", (2,), 1), ("uniform", (-32, 32), 10.0),  # brightness
        ("integers", (2,), 0),  # mode 0: contrast last
        ("integers", (2,), 1), ("uniform", (0.5, 1.5), 1.2),  # saturation
        ("integers", (2,), 1), ("integers", (-18, 18), -18),  # hue in [-18, 18)
        ("integers", (2,), 1), ("uniform", (0.5, 1.5), 0.8),  # contrast
    ])
    out = PhotoMetricDistortion()({"img": img.copy()}, rng)["img"]
    assert not rng.script
    ref = _convert(img, beta=10.0)
    hsv = cv2.cvtColor(ref, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=1.2)
    hsv = cv2.cvtColor(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) - 18) % 180
    ref = _convert(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), alpha=0.8)
    np.testing.assert_array_equal(out, ref)


def test_photometric_distortion_mode_one_puts_contrast_second():
    img = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    rng = ScriptedRng([
        ("integers", (2,), 0),  # no brightness
        ("integers", (2,), 1),  # mode 1
        ("integers", (2,), 1), ("uniform", (0.5, 1.5), 1.4),  # contrast now
        ("integers", (2,), 0), ("integers", (2,), 0),  # no saturation, no hue
    ])
    out = PhotoMetricDistortion()({"img": img}, rng)["img"]
    assert not rng.script
    np.testing.assert_array_equal(out, _convert(img, alpha=1.4))


def test_reduce_zero_label_in_pipeline(tmp_path):
    from ddpseg.data.image_io import write_png_atomic

    write_png_atomic(tmp_path / "a.png", np.array([[0, 1, 2], [150, 255, 7]], np.uint8))
    load = build_transform(dict(type="LoadAnnotations", reduce_zero_label=True))
    out = load({"ann_info": {"seg_map": "a.png"}, "seg_prefix": str(tmp_path), "seg_fields": []})
    np.testing.assert_array_equal(out["gt_semantic_seg"], [[255, 0, 1], [149, 255, 6]])


def test_build_transform_names_unknown_type_and_argument():
    with pytest.raises(ValueError, match="unknown transform type 'Rotate'"):
        build_transform(dict(type="Rotate"))
    with pytest.raises(ValueError, match=r"RandomFlip: unknown argument\(s\) \['probability'\]"):
        build_transform(dict(type="RandomFlip", probability=0.5))
    with pytest.raises(ValueError, match="RandomCrop"):
        build_transform(dict(type="RandomCrop"))  # crop_size missing


def test_config_lists_read_like_tuples():
    """A config that went through JSON has lists where the file had tuples."""
    a = Resize(img_scale=[2048, 1024], ratio_range=[0.5, 2.0])
    b = Resize(img_scale=(2048, 1024), ratio_range=(0.5, 2.0))
    assert a.img_scale == b.img_scale == [(2048, 1024)]
