"""Whole / slide / multi-scale-flip inference, checked on hand-made score functions (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpseg.evaluation.tta import (
    aug_test,
    aug_test_probs,
    grouped_softmax,
    image_generator,
    inference,
    merged_scores,
    simple_test,
    slide_inference,
    whole_inference,
)


def meta(h, w, ori=None, flip=False, direction="horizontal"):
    return [dict(img_shape=(h, w, 3), ori_shape=ori or (h, w, 3), pad_shape=(h, w, 3), flip=flip, flip_direction=direction)]


class Recorder:
    """A score function that remembers the windows it saw and returns a position-dependent map."""

    def __init__(self, fn):
        self.fn = fn
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.fn(x)


def test_slide_grid_follows_mmseg_rule_and_clips_last_window_to_the_border():
    # h=10, crop 4, stride 3: h_grids = (10-4+3-1)//3+1 = 3 -> rows (0,4) (3,7) (6,10)
    # w=13, crop 5, stride 4: w_grids = (13-5+4-1)//4+1 = 3 -> cols (0,5) (4,9) (8,13)
    img = torch.arange(10 * 13, dtype=torch.float32).view(1, 1, 10, 13)
    seen = []

    def fn(x):
        seen.append(x.clone())
        return x

    slide_inference(fn, img, meta(10, 13), crop_size=(4, 5), stride=(3, 4), rescale=False)
    windows = [(y, x) for y in ((0, 4), (3, 7), (6, 10)) for x in ((0, 5), (4, 9), (8, 13))]
    assert len(seen) == len(windows)
    for crop, ((y1, y2), (x1, x2)) in zip(seen, windows):
        torch.testing.assert_close(crop, img[:, :, y1:y2, x1:x2])


def test_slide_averages_overlapping_window_scores_with_a_count_map():
    img = torch.randn(2, 3, 10, 13)
    # Each window adds its own offset, so overlaps must be averaged to be reproduced here.
    calls = []

    def fn(x):
        calls.append(len(calls))
        return x[:, :2] * 2 + len(calls)

    out = slide_inference(fn, img, meta(10, 13), crop_size=(4, 5), stride=(3, 4), rescale=False)
    expected = torch.zeros(2, 2, 10, 13)
    count = torch.zeros(1, 1, 10, 13)
    k = 0
    for y1, y2 in ((0, 4), (3, 7), (6, 10)):
        for x1, x2 in ((0, 5), (4, 9), (8, 13)):
            k += 1
            expected[:, :, y1:y2, x1:x2] += img[:, :2, y1:y2, x1:x2] * 2 + k
            count[:, :, y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, expected / count)


def test_slide_with_window_larger_than_image_is_one_clipped_window():
    fn = Recorder(lambda x: x * 3)
    img = torch.randn(1, 2, 6, 7)
    out = slide_inference(fn, img, meta(6, 7), crop_size=(16, 16), stride=(8, 8), rescale=False)
    assert fn.shapes == [(6, 7)]
    torch.testing.assert_close(out, img * 3)


def test_whole_cuts_padding_then_resizes_bilinear_to_original_size():
    img = torch.randn(1, 3, 8, 8)
    out = whole_inference(lambda x: x, img, meta(6, 6, ori=(12, 9, 3)), rescale=True, align_corners=False)
    expected = F.interpolate(img[:, :, :6, :6], size=(12, 9), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)


def test_inference_applies_softmax_even_to_probabilities_as_the_original_does():
    probs = torch.rand(1, 5, 4, 6).softmax(1)
    out = inference(lambda x: probs, torch.zeros(1, 3, 4, 6), meta(4, 6), {"mode": "whole"}, min_size=1)
    torch.testing.assert_close(out, probs.softmax(1))


@pytest.mark.parametrize("direction,dim", [("horizontal", 3), ("vertical", 2)])
def test_inference_undoes_the_flip_of_a_flipped_copy(direction, dim):
    x = torch.randn(1, 4, 5, 7)
    out = inference(lambda t: t, x.flip(dim), meta(5, 7, flip=True, direction=direction), {"mode": "whole"}, min_size=1)
    torch.testing.assert_close(out, x.softmax(1))


def test_aug_test_averages_softmax_over_copies_and_one_copy_equals_simple_test():
    a, b = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
    metas = [meta(6, 8), meta(6, 8, flip=True)]
    probs = aug_test_probs(lambda t: t, [a, b.flip(3)], metas, {"mode": "whole"}, min_size=1)
    torch.testing.assert_close(probs, (a.softmax(1) + b.softmax(1)) / 2)
    labels = aug_test(lambda t: t, [a, b.flip(3)], metas, {"mode": "whole"}, min_size=1)
    np.testing.assert_array_equal(labels[0], ((a.softmax(1) + b.softmax(1)) / 2).argmax(1)[0].numpy())
    single = simple_test(lambda t: t, a, metas[0], {"mode": "whole"}, min_size=1)
    np.testing.assert_array_equal(single[0], aug_test(lambda t: t, [a], metas[:1], {"mode": "whole"}, min_size=1)[0])


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_tiny_images_are_padded_for_the_backbone_and_cut_back(mode):
    def fn(x):
        assert min(x.shape[2:]) >= 32, x.shape
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)

    img = torch.randn(1, 3, 1, 40)
    cfg = {"mode": mode, "crop_size": (32, 32), "stride": (16, 16)}
    scores = merged_scores(fn, img, meta(1, 40), cfg)
    assert scores.shape == (1, 2, 1, 40)
    torch.testing.assert_close(scores[:, 0], img[:, 0])


def test_grouped_softmax_normalises_each_stacked_map_separately():
    scores = torch.randn(1, 3 * 4, 2, 2)
    out = grouped_softmax(scores, num_classes=4)
    torch.testing.assert_close(out.view(1, 3, 4, 2, 2).sum(2), torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match="multiple of num_classes"):
        grouped_softmax(torch.randn(1, 5, 2, 2), num_classes=4)


def test_bad_test_cfg_names_the_problem():
    img = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        merged_scores(lambda x: x, img, meta(32, 32), {"mode": "tiles"})
    with pytest.raises(ValueError, match="crop_size"):
        merged_scores(lambda x: x, img, meta(32, 32), {"mode": "slide"})


def test_image_generator_depends_only_on_seed_and_index():
    draw = lambda g: torch.randn(5, generator=g)  # noqa: E731
    torch.testing.assert_close(draw(image_generator(0, 7)), draw(image_generator(0, 7)))
    assert not torch.equal(draw(image_generator(0, 7)), draw(image_generator(0, 8)))
    assert not torch.equal(draw(image_generator(0, 7)), draw(image_generator(1, 7)))
