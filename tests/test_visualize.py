"""Palettes, overlays, uncertainty maps, image files and training curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpseg.visualize import (
    colorize,
    entropy,
    check_image_extension,
    get_palette,
    image_extensions,
    overlay,
    plot_training_curves,
    save_image,
    save_label_png,
    step_disagreement,
    uncertainty_heatmap,
)


def test_named_palettes_have_dataset_sizes_and_road_first():
    cityscapes = get_palette("cityscapes")
    assert cityscapes.shape == (19, 3) and cityscapes.dtype == np.uint8
    assert tuple(cityscapes[0]) == (128, 64, 128)  # road
    assert get_palette("ade").shape == (150, 3)
    np.testing.assert_array_equal(get_palette("ADE20K"), get_palette("ade"))
    assert get_palette("cityscapes", num_classes=5).shape == (5, 3)


def test_random_palette_matches_mmseg_seeding_and_leaves_global_rng_alone():
    state = np.random.get_state()
    np.random.seed(42)  # mmseg's procedure: seed the global RNG, draw, restore
    expected = np.random.randint(0, 255, size=(7, 3))
    np.random.set_state(state)

    np.random.seed(0)
    first = np.random.rand()
    np.random.seed(0)
    palette = get_palette(None, num_classes=7)
    assert np.random.rand() == first
    np.testing.assert_array_equal(palette, expected)


def test_palette_from_json_text_and_list(tmp_path):
    colours = [[1, 2, 3], [250, 128, 0]]
    (tmp_path / "p.json").write_text(json.dumps(colours))
    (tmp_path / "p.txt").write_text("# R G B\n1 2 3\n250, 128, 0\n")
    for spec in (tmp_path / "p.json", str(tmp_path / "p.txt"), colours, np.array(colours)):
        np.testing.assert_array_equal(get_palette(spec), colours)


def test_bad_palettes_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown palette 'voc'"):
        get_palette("voc")
    with pytest.raises(ValueError, match="19 colours but 20 classes"):
        get_palette("cityscapes", num_classes=20)
    with pytest.raises(ValueError, match="triples"):
        get_palette([[1, 2]])
    (tmp_path / "bad.txt").write_text("1 2 x\n")
    with pytest.raises(ValueError, match="line 1"):
        get_palette(tmp_path / "bad.txt")
    (tmp_path / "two_values.txt").write_text("1 2 3\n4 5\n")
    with pytest.raises(ValueError, match=r"two_values.txt, line 2: expected 'R G B'"):
        get_palette(tmp_path / "two_values.txt")


def test_a_palette_file_with_too_few_colours_is_named_with_both_counts(tmp_path):
    short = tmp_path / "five.txt"
    short.write_text("\n".join(f"{i} {i} {i}" for i in range(5)) + "\n")
    with pytest.raises(ValueError) as err:
        get_palette(short, num_classes=19)
    assert str(short) in str(err.value) and "5 colours" in str(err.value) and "19 colours are needed" in str(err.value)
    (tmp_path / "short.json").write_text("[[1, 2, 3]]")
    with pytest.raises(ValueError, match=r"palette file .*short\.json has 1 colour but 2 classes"):
        get_palette(str(tmp_path / "short.json"), num_classes=2)
    (tmp_path / "ragged.json").write_text("[[1, 2, 3], [4, 5]]")
    with pytest.raises(ValueError, match=r"palette file .*ragged\.json must be a list of \[R, G, B\] triples"):
        get_palette(tmp_path / "ragged.json")
    (tmp_path / "range.json").write_text("[[1, 2, 300]]")
    with pytest.raises(ValueError, match=r"palette file .*range\.json: colours must be integers in 0..255"):
        get_palette(tmp_path / "range.json")


def test_colorize_paints_classes_and_leaves_ignore_black():
    colours = colorize(np.array([[0, 1], [255, 0]]), [[255, 0, 0], [0, 0, 255]])
    np.testing.assert_array_equal(colours[0, 0], [255, 0, 0])  # RGB order: red stays in channel 0
    np.testing.assert_array_equal(colours[0, 1], [0, 0, 255])
    np.testing.assert_array_equal(colours[1, 0], [0, 0, 0])


def test_overlay_blends_like_mmseg_and_truncates():
    image = np.array([[[100, 50, 200], [10, 20, 30]]], dtype=np.uint8)
    labels = np.array([[0, 255]])
    palette = [[128, 64, 128]]
    half = overlay(image, labels, palette, opacity=0.5)
    np.testing.assert_array_equal(half[0, 0], [114, 57, 164])
    # 100*0.7 + 128*0.3 = 108.4 -> 108 ; 50*0.7 + 64*0.3 = 54.2 -> 54 ; 200*0.7 + 128*0.3 = 178.4 -> 178
    np.testing.assert_array_equal(overlay(image, labels, palette, opacity=0.3)[0, 0], [108, 54, 178])
    np.testing.assert_array_equal(half[0, 1], image[0, 1])  # ignore keeps the image
    assert half.dtype == np.uint8
    with pytest.raises(ValueError, match="opacity"):
        overlay(image, labels, palette, opacity=0)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, labels.T, palette)


def test_uncertainty_heatmap_shape_dtype_and_ordering():
    values = np.tile(np.linspace(0.0, 2.0, 64), (48, 1))
    heat = uncertainty_heatmap(values)
    assert heat.dtype == np.uint8 and heat.ndim == 3 and heat.shape[0] == 48
    assert heat.shape[1] > 64  # colour bar panel on the right
    # Inferno runs from black (min) to pale yellow (max).
    assert heat[:, 0].sum() < heat[:, 63].sum()
    panel = heat[:, 64:]
    assert (panel.sum(-1) < 3 * 255).any() and (panel == 255).all(-1).any()  # bar + white background
    assert uncertainty_heatmap(np.zeros((5, 7)), vmin=0, vmax=1).shape[:2][0] == 5  # too small for labels


def test_entropy_of_uniform_and_one_hot():
    uniform = np.full((4, 2, 3), 0.25)
    one_hot = np.zeros((4, 2, 3))
    one_hot[2] = 1
    np.testing.assert_allclose(entropy(uniform), np.full((2, 3), math.log(4)))
    np.testing.assert_allclose(entropy(uniform, normalize=True), 1.0)
    np.testing.assert_array_equal(entropy(one_hot), 0.0)
    as_tensor = entropy(torch.from_numpy(uniform))
    assert isinstance(as_tensor, torch.Tensor)
    torch.testing.assert_close(as_tensor, torch.full((2, 3), math.log(4), dtype=torch.float64))


def test_step_disagreement_counts_earlier_steps_differing_from_the_last():
    steps = [np.array([[0, 1]]), np.array([[2, 1]]), np.array([[2, 1]])]
    np.testing.assert_array_equal(step_disagreement(steps), [[0.5, 0.0]])
    np.testing.assert_array_equal(step_disagreement(steps[:1]), [[0.0, 0.0]])


def test_label_png_round_trip_keeps_indices_and_palette(tmp_path):
    labels = np.array([[0, 1, 18], [255, 5, 0]], dtype=np.int64)
    path = save_label_png(tmp_path / "out" / "label.png", labels, palette="cityscapes")
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), labels)
        stored = np.array(image.getpalette()[: 19 * 3]).reshape(19, 3)
    np.testing.assert_array_equal(stored, get_palette("cityscapes"))
    gray = save_label_png(tmp_path / "gray.png", labels)
    with Image.open(gray) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.array(image), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png", "out"]  # no temp files left
    with pytest.raises(ValueError, match="0..255"):
        save_label_png(tmp_path / "big.png", labels + 1)


def test_save_image_round_trip_is_rgb(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    path = save_image(tmp_path / "red.png", rgb)
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.array(image.convert("RGB")), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["red.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "f.png", rgb.astype(np.float32))


def test_save_image_names_the_path_when_opencv_cannot_write_it(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"cannot write .*out\.xyz: OpenCV has no writer for extension '\.xyz'; use one of \.png \.jpg"):
        save_image(tmp_path / "out.xyz", rgb)  # cv2.imencode raises cv2.error here rather than returning False
    with pytest.raises(ValueError, match=r"cannot write .*gray\.pgm: OpenCV could not encode a 4x5x3 image as '\.pgm'"):
        save_image(tmp_path / "gray.pgm", rgb)  # a writer that exists but takes only gray images
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_image_extensions_are_the_writable_colour_formats_and_checked_case_blind():
    extensions = image_extensions()
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} <= set(extensions)
    assert ".pgm" not in extensions and ".xyz" not in extensions  # gray-only, unknown
    assert check_image_extension("a/b.PNG") == Path("a/b.PNG")
    assert check_image_extension("no_extension") == Path("no_extension")  # written as PNG
    with pytest.raises(ValueError, match=r"^overlay out\.xyz: cannot write images with extension '\.xyz'; use one of \.png"):
        check_image_extension("out.xyz", "overlay")


def test_plot_training_curves_writes_a_png(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [
        {"mode": "train", "iter": i, "lr": 6e-5 * (1 - i / 300), "loss": 2.0 / i, "decode.loss_ce": 1.5 / i}
        for i in range(10, 210, 10)
    ]
    lines += [{"mode": "val", "iter": 100, "mIoU": 0.31, "aAcc": 0.8}, {"mode": "val", "iter": 200, "mIoU": 0.41}]
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = plot_training_curves(log, tmp_path / "curves.png")
    assert out.stat().st_size > 1000
    with Image.open(out) as image:
        assert image.format == "PNG" and image.height > image.width / 4
    with pytest.raises(ValueError, match="no train loss"):
        plot_training_curves([{"mode": "val", "iter": 1}], tmp_path / "empty.png")
