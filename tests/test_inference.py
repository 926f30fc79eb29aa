"""The Python inference API: ddpseg.inference / show_result on a small random-init model."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import ddpseg
from ddpseg.data.image_io import DataError
from ddpseg.evaluation.tta import simple_test
from ddpseg.visualize import get_palette

from .conftest import REPO

CONFIG = REPO / "configs" / "quickstart" / "ddp_convnext_mini_synthetic.py"
SMALL_TEST_SCALE = {"data.test.pipeline.1.img_scale": (128, 64)}  # (w, h): keeps the tests fast


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ddpseg.init_model(CONFIG, cfg_options=SMALL_TEST_SCALE)


@pytest.fixture(scope="module")
def picture():
    """A 60x100 BGR picture with some structure."""
    rng = np.random.default_rng(0)
    img = np.zeros((60, 100, 3), np.uint8)
    img[:30] = (180, 120, 60)
    img[30:, :50] = (40, 200, 90)
    img[30:, 50:] = (90, 90, 220)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_inference_on_a_file_returns_maps_at_the_image_size(model, picture, tmp_path):
    path = tmp_path / "pic.png"
    cv2.imwrite(str(path), picture)
    result = ddpseg.inference(model, path, generator=gen(), return_probs=True)
    assert result.labels.shape == (60, 100) and result.labels.dtype == np.int64
    assert result.probs.shape == (19, 60, 100)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probs.argmax(0))
    assert result.entropy.shape == (60, 100) and 0 <= result.entropy.min() <= result.entropy.max() <= math.log(19) + 1e-5
    assert result.step_disagreement.shape == (60, 100)
    assert set(np.unique(result.step_disagreement)) <= {0.0, 0.5, 1.0}  # 3 steps: 2 earlier ones
    np.testing.assert_array_equal(result.image, picture[:, :, ::-1])
    assert result.filename == str(path)
    assert result.palette.shape == (19, 3)  # the config's dataset is Cityscapes


def test_inference_labels_match_the_test_command_path(model, picture):
    """The API and `ddpseg test` run the same mmseg inference on the same pipeline output."""
    from ddpseg.inference import _prepare

    result = ddpseg.inference(model, picture, generator=gen(3))
    batch = _prepare(model, picture, None)
    g = gen(3)
    labels = simple_test(lambda x: model.sample_logits(x, generator=g), batch["img"][0], batch["img_metas"][0], model.test_cfg)
    np.testing.assert_array_equal(result.labels, labels[0])


def test_same_generator_seed_or_same_noise_give_the_same_result(model, picture):
    a = ddpseg.inference(model, picture, generator=gen(1))
    b = ddpseg.inference(model, picture, generator=gen(1))
    np.testing.assert_array_equal(a.labels, b.labels)
    # The resized picture is 64x107 (fits 128x64 keeping the ratio): noise at 1/4 is 16x26.
    noise = torch.randn((1, 64, 16, 26), generator=gen(1))
    c = ddpseg.inference(model, picture, noise=noise)
    np.testing.assert_array_equal(a.labels, c.labels)
    with pytest.raises(ValueError, match="noise must have shape"):
        ddpseg.inference(model, picture, noise=torch.zeros(1, 64, 8, 8))


@pytest.mark.parametrize("steps", [2.5, 0])
def test_a_fractional_or_zero_step_count_is_refused(model, picture, steps):
    with pytest.raises(ValueError, match=rf"steps must be an integer >= 1 .*got {steps}"):
        ddpseg.inference(model, picture, steps=steps)


def test_one_step_has_no_step_disagreement(model, picture):
    result = ddpseg.inference(model, picture, steps=1, generator=gen())
    assert not result.step_disagreement.any()


def test_accumulation_model_reports_its_own_step_averaged_probabilities(model, picture):
    from ddpseg.evaluation.tta import whole_inference
    from ddpseg.inference import _prepare

    batch = _prepare(model, picture, None)
    model.accumulation = True
    try:
        result = ddpseg.inference(model, picture, generator=gen(), return_probs=True)
        g = gen()
        mean_probs = whole_inference(lambda x: model.sample_logits(x, generator=g), batch["img"][0], batch["img_metas"][0])
    finally:
        model.accumulation = False
    # not softmax-ed a second time (the original does that only for its argmax, which it does not change)
    np.testing.assert_allclose(result.probs, mean_probs[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probs.argmax(0))


def test_slide_mode_runs_and_noise_is_refused_there(picture):
    torch.manual_seed(0)
    options = dict(SMALL_TEST_SCALE, **{"model.test_cfg": dict(mode="slide", crop_size=(48, 48), stride=(32, 32))})
    slide_model = ddpseg.init_model(CONFIG, cfg_options=options)
    result = ddpseg.inference(slide_model, picture, generator=gen())
    assert result.labels.shape == (60, 100)
    with pytest.raises(ValueError, match="whole"):
        ddpseg.inference(slide_model, picture, noise=torch.zeros(1, 64, 16, 26))


def test_missing_and_unreadable_files_raise_errors_naming_the_file(model, tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        ddpseg.inference(model, tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        ddpseg.inference(model, bad)
    with pytest.raises(DataError, match="folder"):
        ddpseg.inference(model, tmp_path)


def test_gray_rgba_and_16bit_files_are_converted_to_colour(model, picture, tmp_path):
    reference = ddpseg.inference(model, picture, generator=gen())
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), picture.astype(np.uint16) * 257)  # 16-bit: >> 8 gives the 8-bit picture back
    np.testing.assert_array_equal(ddpseg.inference(model, deep, generator=gen()).labels, reference.labels)
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)]))
    np.testing.assert_array_equal(ddpseg.inference(model, rgba, generator=gen()).labels, reference.labels)
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), picture[:, :, 1])
    result = ddpseg.inference(model, gray, generator=gen())
    assert result.image.shape == (60, 100, 3) and result.labels.shape == (60, 100)


def test_arrays_and_pil_images_follow_bgr_and_rgb_conventions(model, picture):
    reference = ddpseg.inference(model, picture, generator=gen())
    pil = ddpseg.inference(model, Image.fromarray(picture[:, :, ::-1].copy()), generator=gen())
    np.testing.assert_array_equal(pil.labels, reference.labels)
    deep = ddpseg.inference(model, picture.astype(np.uint16) * 257, generator=gen())
    np.testing.assert_array_equal(deep.labels, reference.labels)
    assert ddpseg.inference(model, picture[:, :, 0], generator=gen()).labels.shape == (60, 100)
    with pytest.raises(DataError, match="0..1"):
        ddpseg.inference(model, picture.astype(np.float32) / 255)
    with pytest.raises(DataError, match="shape"):
        ddpseg.inference(model, np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize(
    "shape,test_scale",
    [((1, 1), (128, 64)), ((20, 20, 4), (128, 64)), ((8, 4000), (4000, 1000)), ((4000, 8), (4000, 1000))],
)
def test_tiny_and_extreme_images_give_a_prediction_of_their_size(model, shape, test_scale):
    """Smaller than the backbone's 32 px after resizing: padded for the model, cut back after."""
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    msfa = model.cfg.data.test.pipeline[1]
    msfa.img_scale = test_scale
    try:
        assert ddpseg.inference(model, image, generator=gen()).labels.shape == shape[:2]
    finally:
        msfa.img_scale = SMALL_TEST_SCALE["data.test.pipeline.1.img_scale"]


def test_an_image_the_pipeline_would_shrink_to_nothing_is_a_clear_error(model):
    # fitting 8x4000 into 128x64 (w, h) would make it 0 pixels high
    with pytest.raises(DataError, match=r"8x4000 pixels.*h=0"):
        ddpseg.inference(model, np.zeros((8, 4000, 3), np.uint8))


def test_a_generator_on_another_device_than_the_model_is_a_clear_error(model, picture):
    """The docs' CPU generator with a model on CUDA: torch would fail at the first noise draw, after the encoder,
    with "Expected a 'cuda' device type for generator". A stand-in generator on CUDA shows the check without a GPU."""
    from types import SimpleNamespace

    on_cuda = SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"^generator is on cuda:0 but the model on cpu: .*"
                                         r"torch\.Generator\(device='cpu'\)"):
        ddpseg.inference(model, picture, generator=on_cuda)


def test_show_result_draws_the_palette_and_writes_the_file(model, picture, tmp_path):
    result = ddpseg.inference(model, picture, generator=gen())
    out = tmp_path / "sub" / "overlay.png"
    drawn = ddpseg.show_result(result, opacity=1.0, out_file=out)
    palette = get_palette("cityscapes")
    np.testing.assert_array_equal(drawn, palette[result.labels])
    np.testing.assert_array_equal(cv2.imread(str(out))[:, :, ::-1], drawn)
    half = ddpseg.show_result(result.labels, picture, palette="cityscapes")
    expected = (picture[:, :, ::-1] * 0.5 + palette[result.labels] * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(half, expected)
    with pytest.raises(ValueError, match="needs the image"):
        ddpseg.show_result(result.labels)
