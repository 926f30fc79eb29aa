"""ConvNeXt: parity with the original DDP backbone, mmcls semantics, pretrained-weight conversion."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpseg.models.backbones import ConvNeXt, convnext
from ddpseg.models.backbones.convnext import LayerNorm2d, convert_pretrained, load_pretrained

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MINI = dict(
    arch=dict(depths=[1, 1, 2, 1], channels=[32, 64, 128, 256]),
    out_indices=[0, 1, 2, 3],
    drop_path_rate=0.4,
    layer_scale_init_value=1.0,
    gap_before_final_norm=False,
)


def mini(**overrides) -> ConvNeXt:
    torch.manual_seed(0)
    model = ConvNeXt(**{**MINI, **overrides})
    model.init_weights()
    return model


def test_mini_model_reproduces_original_backbone_outputs():
    golden = torch.load(FIXTURES / "mini_convnext_golden.pt", weights_only=True)
    model = ConvNeXt(**MINI).eval()
    report = load_pretrained(model, FIXTURES / "mini_convnext.pth", strict=True)
    assert report.complete and len(report.loaded) == len(model.state_dict())
    with torch.no_grad():
        outs = model(golden["inputs"]["main"])
    expected = golden["main"]["backbone_outs"]
    assert len(outs) == len(expected) == 4
    for ours, theirs in zip(outs, expected):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-5


def test_odd_input_sizes_are_floored_by_strided_convs():
    with torch.no_grad():
        outs = mini().eval()(torch.randn(1, 3, 120, 200))
    assert [tuple(o.shape[-2:]) for o in outs] == [(30, 50), (15, 25), (7, 12), (3, 6)]
    assert all(o.is_contiguous() for o in outs)


def test_norm_eps_follows_mmcls_stem_blocks_outputs_1e6_downsampling_1e5():
    model = ConvNeXt(**MINI)
    assert model.downsample_layers[0][1].eps == 1e-6
    assert all(model.downsample_layers[i][0].eps == 1e-5 for i in (1, 2, 3))
    assert model.stages[2][1].norm.eps == 1e-6 and model.norm3.eps == 1e-6
    assert ConvNeXt(**MINI, norm_cfg=dict(type="LN2d", eps=1e-3)).norm0.eps == 1e-3


def test_layernorm2d_normalises_channels_like_layer_norm_channels_last():
    norm = LayerNorm2d(8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 8, 5, 7)
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2))


def test_named_archs_and_feature_channels():
    with torch.device("meta"):
        for arch, settings in ConvNeXt.arch_settings.items():
            model = ConvNeXt(arch=arch, out_indices=[0, 1, 2, 3])
            assert model.feature_channels == settings["channels"]
            assert [len(s) for s in model.stages] == settings["depths"]
        assert ConvNeXt(arch="tiny").out_indices == [3]  # mmcls default: last stage only


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arch="huge"), "arch 'huge' unknown"),
        (dict(arch=dict(depths=[1, 1])), "depths"),
        (dict(out_indices=[4]), "out of range"),
        (dict(norm_cfg=dict(type="BN")), "norm_cfg type 'BN'"),
        (dict(act_cfg=dict(type="ReLU")), "act_cfg"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ConvNeXt(**{**MINI, **kwargs})


def test_gap_before_final_norm_returns_pooled_vectors():
    with torch.no_grad():
        outs = mini(gap_before_final_norm=True, out_indices=-1).eval()(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 256)]


def test_drop_path_rates_rise_linearly_and_act_only_in_training():
    model = mini()
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for stage in model.stages for b in stage]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)
    assert rates == sorted(rates)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert all(torch.equal(a, b) for a, b in zip(model(x), model(x)))
        model.train()
        assert any(not torch.equal(a, b) for a, b in zip(model(x), model(x)))


def test_frozen_stages_stay_frozen_after_train():
    model = mini(frozen_stages=2).train()
    for i in range(4):
        frozen = i < 2
        params = [*model.downsample_layers[i].parameters(), *model.stages[i].parameters()]
        assert all(p.requires_grad != frozen for p in params)
        assert model.stages[i].training != frozen


def test_init_weights_uses_truncated_normal_and_unit_layernorms():
    model = mini()
    weight = model.stages[2][0].pointwise_conv1.weight
    assert weight.abs().max() <= 2.0 and 0.015 < weight.std() < 0.025
    assert torch.count_nonzero(model.stages[2][0].pointwise_conv1.bias) == 0
    assert torch.equal(model.norm1.weight, torch.ones(64))
    assert torch.equal(model.stages[0][0].gamma, torch.ones(32))  # layer scale keeps its init value


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for with_cp in (False, True):
        model = mini(with_cp=with_cp, drop_path_rate=0.0)
        sum(o.sum() for o in model(x.clone().requires_grad_())).backward()
        grads.append(model.stages[2][1].pointwise_conv1.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --- pretrained weights -------------------------------------------------------------------------


def to_official(ours: dict) -> dict:
    """Our (mmcls) names → facebookresearch release names, written independently of the converter."""
    out = {}
    for key, value in ours.items():
        if re.match(r"norm[012]\.", key):
            continue  # the release has only the final norm
        key = key.replace("depthwise_conv", "dwconv").replace("pointwise_conv", "pwconv")
        out[key.replace("norm3.", "norm.") if key.startswith("norm3.") else key] = value
    out["head.weight"], out["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    return {"model": out}


def to_timm(ours: dict) -> dict:
    out = {"head.fc.weight": torch.zeros(1000, 256), "head.fc.bias": torch.zeros(1000)}
    for key, value in ours.items():
        if re.match(r"norm[012]\.", key):
            continue
        stage_ds = re.match(r"downsample_layers\.(\d)\.(\d)\.(.*)", key)
        if stage_ds:
            i, j, rest = stage_ds.groups()
            key = f"stem.{j}.{rest}" if i == "0" else f"stages.{i}.downsample.{j}.{rest}"
        key = re.sub(r"^stages\.(\d)\.(\d)\.", r"stages.\1.blocks.\2.", key)
        key = key.replace("depthwise_conv", "conv_dw").replace("pointwise_conv", "mlp.fc")
        key = key.replace("norm3.", "head.norm.")
        if ".mlp.fc" in key and key.endswith("weight"):
            value = value[..., None, None]  # timm conv_mlp layout, exercised on purpose
        out[key] = value
    return out


@pytest.mark.parametrize("fmt", ["official", "timm", "mmcls"])
def test_converter_round_trips_every_release_format(fmt):
    ours = mini().state_dict()
    if fmt == "official":
        release = to_official(ours)
    elif fmt == "timm":
        release = to_timm(ours)
    else:
        release = {"meta": {}, "state_dict": {**{f"backbone.{k}": v for k, v in ours.items()}, "head.fc.bias": torch.zeros(3)}}
    converted = convert_pretrained(release)
    expected = ours if fmt == "mmcls" else {k: v for k, v in ours.items() if not re.match(r"norm[012]\.", k)}
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_pretrained_from_files_reports_missing_norms(tmp_path, suffix):
    source = mini()
    release = to_official(source.state_dict())["model"]
    path = tmp_path / f"convnext{suffix}"
    if suffix == ".pth":
        torch.save({"model": release}, path)
    else:
        save_file({k: v.contiguous() for k, v in release.items()}, path)
    target = ConvNeXt(**MINI)
    report = load_pretrained(target, path)
    assert sorted(report.missing) == [f"norm{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    assert report.unexpected == [] and report.mismatched == []
    assert torch.equal(target.stages[2][1].pointwise_conv2.weight, source.stages[2][1].pointwise_conv2.weight)
    assert "missing in checkpoint 6" in str(report)
    with pytest.raises(ValueError, match="norm0.weight"):
        load_pretrained(ConvNeXt(**MINI), path, strict=True)


def test_load_pretrained_reports_shape_mismatch_without_loading():
    source = mini().state_dict()
    target = ConvNeXt(**{**MINI, "arch": dict(depths=[1, 1, 2, 1], channels=[32, 64, 128, 512])})
    before = target.norm3.weight.clone()
    report = convnext.load_pretrained(target, source)
    assert ("norm3.weight", (256,), (512,)) in report.mismatched
    assert torch.equal(target.norm3.weight, before)


def test_missing_file_and_non_tensor_input_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(ConvNeXt(**MINI), tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no tensors"):
        convert_pretrained({"meta": {"epoch": 3}})


def test_norm_requires_grad_false_freezes_only_the_configured_norms():
    model = ConvNeXt(**MINI, norm_cfg=dict(type="LN2d", eps=1e-6, requires_grad=False))
    assert not model.downsample_layers[0][1].weight.requires_grad
    assert not model.stages[1][0].norm.weight.requires_grad and not model.norm2.bias.requires_grad
    assert model.downsample_layers[2][0].weight.requires_grad  # the downsampling norms ignore norm_cfg
