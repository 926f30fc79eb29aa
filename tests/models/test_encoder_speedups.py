"""Opt-in encoder speed-ups (ddpseg.runtime.speed_up_encoder) against float32 eager outputs."""

from __future__ import annotations

import pytest
import torch

from ddpseg.runtime import speed_up_encoder


@pytest.fixture()
def fresh_mini_model(mini_model_cfg):
    from ddpseg.convert import load_model_weights
    from ddpseg.models.build import build_model

    from ..conftest import FIXTURES

    model = build_model(mini_model_cfg).eval()
    load_model_weights(model, FIXTURES / "mini_convnext.pth")
    return model


def test_channels_last_keeps_the_parity_labels(fresh_mini_model, mini_model, golden):
    img, noise = golden["inputs"]["main"], golden["main"]["noise"]
    ref = mini_model.sample_logits(img, steps=3, noise=noise)
    model = speed_up_encoder(fresh_mini_model, channels_last=True)
    assert model.backbone.downsample_layers[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert set(model.state_dict()) == set(mini_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.extract_feat(img), mini_model.extract_feat(img), rtol=0, atol=1e-4)
    out = model.sample_logits(img, steps=3, noise=noise)
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= 0.999, agreement
    assert (out.argmax(1) == golden["main"]["T3"]["encode_decode_argmax"].long()).float().mean().item() >= 0.999


def test_rejects_models_without_an_encoder():
    with pytest.raises(TypeError, match="backbone"):
        speed_up_encoder(torch.nn.Linear(2, 2), channels_last=True)


@pytest.mark.slow
def test_compiled_encoder_matches_eager(fresh_mini_model, mini_model, golden):
    img = golden["inputs"]["main"]
    model = speed_up_encoder(fresh_mini_model, compile=True)
    assert set(model.state_dict()) == set(mini_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.extract_feat(img), mini_model.extract_feat(img), rtol=0, atol=1e-4)
