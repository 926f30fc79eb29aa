import cv2
import numpy as np
import pytest

from ddpseg.data.image_ops import impad, impad_to_multiple, imnormalize, imrescale, rescale_size, scale_size


def test_scale_size_rounds_half_up():
    assert scale_size((683, 512), 0.5) == (342, 256)  # 341.5 -> 342
    assert scale_size((100, 101), 0.5) == (50, 51)  # 50.5 -> 51


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((2048, 1024), (2048, 1024), (2048, 1024)),  # a Cityscapes frame at its test scale stays
        ((683, 512), (2048, 512), (683, 512)),  # short side already at the bound
        ((1024, 512), (2048, 1024), (2048, 1024)),  # upscaled until a bound is met
        ((500, 375), (2048, 512), (683, 512)),  # 500 * 512/375 = 682.67 -> 683
        ((640, 480), (1024, 2048), (1365, 1024)),  # the pair's order does not matter
    ],
)
def test_rescale_size_fits_long_and_short_side_bounds(size, scale, expected):
    assert rescale_size(size, scale)[0] == expected


def test_rescale_size_rejects_bad_scale():
    with pytest.raises(ValueError, match="positive"):
        rescale_size((10, 10), -1.0)
    with pytest.raises(TypeError):
        rescale_size((10, 10), "big")


def test_imrescale_uses_nearest_for_labels_without_new_values():
    label = np.random.default_rng(0).integers(0, 5, size=(37, 53)).astype(np.uint8)
    out, factor = imrescale(label, (200, 100), "nearest")
    assert set(np.unique(out)) <= set(np.unique(label))
    assert out.shape == (100, 143) and factor == pytest.approx(100 / 37)


def test_impad_pads_bottom_right_with_value():
    img = np.ones((3, 4, 3), np.float32)
    out = impad(img, (5, 6), 0)
    assert out.shape == (5, 6, 3) and out[:3, :4].min() == 1 and out[3:].max() == 0 and out[:, 4:].max() == 0
    seg = impad(np.zeros((3, 4), np.uint8), (5, 6), 255)
    assert (seg[3:] == 255).all() and (seg[:, 4:] == 255).all() and (seg[:3, :4] == 0).all()
    assert impad_to_multiple(np.zeros((33, 64), np.uint8), 32).shape == (64, 64)


def test_imnormalize_matches_float64_reference_and_swaps_to_rgb():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(8, 9, 3)).astype(np.uint8)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    out = imnormalize(img, mean, std, to_rgb=True)
    ref = (img[..., ::-1].astype(np.float64) - mean) / std
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 1e-5
    assert np.abs(imnormalize(img, mean, std, to_rgb=False) - (img - mean) / std).max() < 1e-5


@pytest.mark.parametrize("to_rgb", [True, False])
def test_imnormalize_is_bit_equal_to_the_originals_opencv_arithmetic(to_rgb):
    """mmseg's Normalize: float32 mean/std; OpenCV subtracts the mean in float32, multiplies by 1/std in float64
    and rounds once (a float32 multiply differs by 1 ulp in ~28 % of the values)."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(64, 96, 3)).astype(np.uint8)
    mean32 = np.array([123.675, 116.28, 103.53], np.float32)
    std32 = np.array([58.395, 57.12, 57.375], np.float32)
    ref = img.astype(np.float32).copy()
    if to_rgb:
        cv2.cvtColor(ref, cv2.COLOR_BGR2RGB, ref)
    cv2.subtract(ref, np.float64(mean32.reshape(1, -1)), ref)
    cv2.multiply(ref, 1 / np.float64(std32.reshape(1, -1)), ref)
    np.testing.assert_array_equal(imnormalize(img, mean32, std32, to_rgb=to_rgb), ref)
