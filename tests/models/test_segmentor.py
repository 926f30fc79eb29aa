"""Behaviour of the segmentor beyond the golden set: batches, sizes, generators, training modes."""

from __future__ import annotations

import pytest
import torch

from ddpseg.models.build import build_model


def test_a_batch_of_two_equals_each_image_alone(mini_model):
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(2, 3, 64, 96, generator=gen)
    noise = torch.randn(2, 64, 16, 24, generator=gen)
    both = mini_model.sample_logits(imgs, steps=2, noise=noise)
    for i in range(2):
        alone = mini_model.sample_logits(imgs[i : i + 1], steps=2, noise=noise[i : i + 1])
        torch.testing.assert_close(both[i : i + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size,feat", [((120, 200), (30, 50)), ((130, 171), (32, 42))])
def test_any_input_size_gives_full_size_logits(mini_model, size, feat):
    img = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert tuple(mini_model.extract_feat(img).shape[2:]) == feat
    out = mini_model.sample_logits(img, steps=1, generator=torch.Generator().manual_seed(1))
    assert out.shape == (1, 19, *size)


def test_a_generator_makes_sampling_reproducible_and_noise_shape_is_checked(mini_model):
    img = torch.randn(1, 3, 64, 64)
    a = mini_model.sample_logits(img, steps=2, generator=torch.Generator().manual_seed(3))
    b = mini_model.sample_logits(img, steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="noise must have shape"):
        mini_model.sample_logits(img, steps=1, noise=torch.randn(1, 64, 8, 8))


def test_accumulation_randsteps_and_ddpm_produce_probabilities_of_the_right_shape(mini_model_cfg):
    cfg = dict(mini_model_cfg, accumulation=True, randsteps=2, diffusion="ddpm")
    model = build_model(cfg).eval()
    out = model.sample_logits(torch.randn(2, 3, 64, 64), steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 19, 64, 64)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 64, 64), rtol=0, atol=1e-5)


def test_training_backpropagates_into_every_trainable_part(mini_model_cfg):
    for kind in ("DDP", "SelfAlignedDDP"):
        model = build_model(dict(mini_model_cfg, type=kind)).train()
        gt = torch.randint(0, 19, (2, 1, 64, 64))
        gt[:, :, :4] = 255
        losses = model.forward_train(torch.randn(2, 3, 64, 64), gt)
        total = sum(v for k, v in losses.items() if "loss" in k)
        total.backward()
        assert torch.isfinite(total)
        for name in ("backbone.downsample_layers.0.0.weight", "neck.merge.conv.conv.weight", "transform.weight",
                     "time_mlp.fc1.weight", "decode_head.layers.0.attn.value_proj.weight", "auxiliary_head.conv_seg.weight",
                     "label_encoder.embedding.weight"):  # fmt: skip
            grad = dict(model.named_parameters())[name].grad
            assert grad is not None and grad.abs().sum() > 0, f"{kind}: no gradient for {name}"


@pytest.mark.parametrize("batch", [1, 2])
def test_logit_maps_are_canonical_channels_last_views(batch):
    """A batch stride of K (not H·W·K) at B = 1 sends F.interpolate down its slow NCHW path."""
    from ddpseg.models.heads import to_channels_last, tokens_to_map

    h, w, k = 5, 7, 3
    tokens = torch.randn(batch, h * w, k)
    expected_strides = (h * w * k, 1, w * k, k)
    out = tokens_to_map(tokens, h, w)
    assert out.stride() == expected_strides and out.data_ptr() == tokens.data_ptr()
    torch.testing.assert_close(out, tokens.transpose(1, 2).reshape(batch, k, h, w), rtol=0, atol=0)
    weird = torch.as_strided(tokens, (batch, k, h, w), (k if batch == 1 else h * w * k, 1, w * k, k))
    nchw = out.contiguous()
    for x in (weird, nchw, out):
        y = to_channels_last(x)
        assert y.stride() == expected_strides
        torch.testing.assert_close(y, out, rtol=0, atol=0)
    assert to_channels_last(weird).data_ptr() == tokens.data_ptr()  # already NHWC in memory: no copy


def test_sampled_logits_are_resized_from_contiguous_nchw_maps_as_in_the_original(mini_model):
    """The original resizes its conv output (NCHW); PyTorch's channels-last bilinear kernel rounds differently."""
    import torch.nn.functional as F

    img = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        feats = mini_model.extract_feat(img)
        noise = torch.randn(mini_model.randsteps, feats.shape[1], *feats.shape[2:])
        small = mini_model.sample_features(feats, steps=1, noise=noise)
        logits = mini_model.sample_logits(img, steps=1, noise=noise)
    assert small.is_contiguous() and logits.is_contiguous()
    want = F.interpolate(small.clone(), size=(64, 128), mode="bilinear", align_corners=mini_model.align_corners)
    assert torch.equal(logits, want)


@pytest.mark.parametrize("steps", [2.5, 2.0, 0, -1, "2", True])
def test_a_step_count_that_is_not_a_positive_integer_is_refused_not_truncated(mini_model, steps):
    img = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=rf"steps must be an integer >= 1 \(the number of diffusion steps\), got {steps!r}"):
        mini_model.sample_logits(img, steps=steps)


def test_integer_like_step_counts_are_accepted(mini_model):
    import numpy as np

    img, noise = torch.zeros(1, 3, 32, 32), torch.randn(1, 64, 8, 8)
    expected = mini_model.sample_logits(img, steps=2, noise=noise)
    torch.testing.assert_close(mini_model.sample_logits(img, steps=np.int64(2), noise=noise), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_run_in_float32_under_autocast(dtype):
    """As mmseg's force_fp32 losses: the bf16/fp16 logits of an autocast forward are resized, scored and
    compared in float32, and the gradient reaches them in their own dtype."""
    from ddpseg.models.heads import seg_loss_and_accuracy

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 8, 16, generator=gen) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, 5, (2, 1, 32, 64), generator=gen)
    labels[:, :, :4] = 255
    expected = seg_loss_and_accuracy(logits.detach().float(), labels, loss_weight=0.4)
    with torch.autocast("cpu", dtype=dtype):
        loss, acc = seg_loss_and_accuracy(logits, labels, loss_weight=0.4)
    assert loss.dtype == acc.dtype == torch.float32
    assert torch.equal(loss, expected[0]) and torch.equal(acc, expected[1])
    loss.backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()
