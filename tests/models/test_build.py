"""build_model: a wrong-typed or inconsistent model value is a ModelConfigError naming the key, at build time
(not a TypeError deep in the model code, or a conv error at the first forward)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ddpseg.config import Config, parse_cfg_options
from ddpseg.models.build import ModelConfigError, build_model, check_test_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def changed(cfg, dotted, value):
    """A copy of the model config with one key set (``'decode_head.num_classes'``, ``'neck.0.in_channels'``)."""
    cfg = copy.deepcopy(cfg)
    *path, last = dotted.split(".")
    node = cfg
    for part in path:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return cfg


def build_meta(cfg):
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts),
                         ids=lambda p: p.stem)
def test_every_shipped_model_config_builds(path):
    build_meta(Config.fromfile(path).model)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("timesteps", "three", r"model\.timesteps must be an integer >= 1, got 'three'"),
        ("timesteps", 2.5, r"model\.timesteps must be an integer >= 1, got 2\.5"),
        ("timesteps", 0, r"model\.timesteps must be an integer >= 1, got 0"),
        ("randsteps", 0, r"model\.randsteps must be an integer >= 1, got 0"),
        ("bit_scale", "0.01", r"model\.bit_scale must be a number > 0, got '0\.01'"),
        ("bit_scale", 0, r"model\.bit_scale must be a number > 0, got 0"),
        ("time_difference", "1", r"model\.time_difference must be a number >= 0, got '1'"),
        ("learned_sinusoidal_dim", 15, r"model\.learned_sinusoidal_dim must be an even integer >= 2, got 15"),
        ("sample_range", (0.9, 0.1), r"model\.sample_range must be a pair \(t_min, t_max\) with t_min < t_max"),
        ("sample_range", 0.5, r"model\.sample_range must be a pair"),
        ("noise_schedule", "cos", r"model\.noise_schedule must be one of 'cosine', 'linear', got 'cos'"),
        ("diffusion", "ddin", r"model\.diffusion must be one of 'ddim', 'ddpm', got 'ddin'"),
        ("accumulation", "yes", r"model\.accumulation must be True or False, got 'yes'"),
        ("decode_head.num_classes", 0, r"model\.decode_head\.num_classes must be an integer >= 1, got 0"),
        ("decode_head.num_classes", "19", r"model\.decode_head\.num_classes must be an integer >= 1, got '19'"),
        ("decode_head.ignore_index", "abc", r"model\.decode_head\.ignore_index must be an integer, got 'abc'"),
        ("decode_head.channels", 64.0, r"model\.decode_head\.channels must be an integer >= 1, got 64\.0"),
        ("decode_head.align_corners", "False", r"model\.decode_head\.align_corners must be True or False"),
        ("decode_head.loss_decode.loss_weight", "abc", r"model\.decode_head\.loss_decode\.loss_weight must be a number"),
        ("decode_head.encoder.num_layers", "2", r"model\.decode_head\.encoder\.num_layers must be an integer >= 1"),
        ("decode_head.encoder.transformerlayers.attn_cfgs.num_heads", 0, r"attn_cfgs\.num_heads must be an integer >= 1"),
        ("decode_head.encoder.transformerlayers.attn_cfgs.num_heads", 3, r"model\.decode_head: .*64.*3"),
        ("decode_head.positional_encoding.num_feats", None, r"positional_encoding\.num_feats must be an integer"),
        ("decode_head.loss_decode", [dict(type="CrossEntropyLoss")], r"model\.decode_head\.loss_decode must be a dict"),
        ("auxiliary_head.num_classes", 4,
         r"model\.auxiliary_head\.num_classes \(4\) must equal model\.decode_head\.num_classes \(19\)"),
        ("auxiliary_head.in_channels", 32, r"model\.auxiliary_head\.in_channels \(32\) must equal the neck's output"),
        ("auxiliary_head.loss_decode.loss_weight", "abc", r"auxiliary_head\.loss_decode\.loss_weight must be a number"),
        ("auxiliary_head.dropout_ratio", 2, r"model\.auxiliary_head\.dropout_ratio must be a number in \[0, 1\], got 2"),
        ("neck.0.in_channels", [32, 64, 128, 128],
         r"model\.neck\[0\]\.in_channels \(\[32, 64, 128, 128\]\) must be the channels of the backbone's feature maps: "
         r"\[32, 64, 128, 256\]"),
        ("neck.0.in_channels", "32,64", r"model\.neck\[0\]\.in_channels must be a list of channel counts"),
        ("neck.0.out_channels", 32, r"model\.neck\[1\]\.in_channels \(\[64, 64, 64, 64\]\) must be the FPN's outputs"),
        ("neck.1.kernel_size", "1", r"model\.neck\[1\]\.kernel_size must be an integer >= 1, got '1'"),
        ("backbone.init_cfg", "dict(type='Pretrained', checkpoint='x.pth')",
         r"model\.backbone\.init_cfg must be a dict or None, got the string .*set its keys one by one"),
        ("backbone.init_cfg", dict(type="Pretrained", checkpont="x.pth"),
         r"unknown key 'checkpont' \(did you mean 'checkpoint'\?\) in model\.backbone\.init_cfg"),
        ("test_cfg", dict(mod="slide"), r"unknown key 'mod' \(did you mean 'mode'\?\) in model\.test_cfg"),
        ("test_cfg", dict(mode="slid"), r"model\.test_cfg\.mode must be 'whole' or 'slide', got 'slid'"),
        ("test_cfg", dict(mode="slide", crop_size=64), r"model\.test_cfg \(mode 'slide'\): missing required key 'stride'"),
        ("test_cfg", dict(mode="slide", crop_size=(64, 0), stride=32), r"model\.test_cfg\.crop_size must be a positive int"),
    ],
)
def test_bad_model_values_are_named_at_build_time(mini_model_cfg, key, value, message):
    with pytest.raises(ModelConfigError, match=message):
        build_meta(changed(mini_model_cfg, key, value))


def test_valid_variations_still_build(mini_model_cfg):
    cfg = dict(mini_model_cfg, timesteps=5, randsteps=2, bit_scale=1, sample_range=[0, 0.9], accumulation=True,
               diffusion="ddpm", noise_schedule="linear", test_cfg=dict(mode="slide", crop_size=(32, 64), stride=16))
    model = build_meta(cfg)
    assert (model.timesteps, model.randsteps, model.bit_scale, model.sample_range) == (5, 2, 1.0, (0, 0.9))
    assert model.test_cfg == dict(mode="slide", crop_size=(32, 64), stride=16)
    assert build_meta(changed(mini_model_cfg, "decode_head.loss_decode.loss_weight", 2)).decode_head.loss_weight == 2


def test_a_pretrained_init_cfg_can_be_set_key_by_key_from_the_command_line(tmp_path):
    """What the init_cfg message advises works: the keys one by one, with _delete_ over init_cfg=None."""
    cfg = Config.fromfile(CONFIGS / "quickstart" / "ddp_convnext_mini_synthetic.py")
    cfg.merge_from_dict({"model.backbone.init_cfg._delete_": True, "model.backbone.init_cfg.type": "Pretrained",
                         "model.backbone.init_cfg.checkpoint": str(tmp_path / "in1k.pth")})
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=str(tmp_path / "in1k.pth"))
    build_meta(cfg.model)  # without load_pretrained the file is not read
    literal = parse_cfg_options([f"model.backbone.init_cfg={{'type': 'Pretrained', 'checkpoint': '{tmp_path / 'x.pth'}'}}"])
    cfg.merge_from_dict(literal)  # or as a dict literal
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=str(tmp_path / "x.pth"))


def test_check_test_cfg_returns_a_plain_dict():
    assert check_test_cfg(Config(dict(mode="whole")).to_dict()) == {"mode": "whole"}
    with pytest.raises(ModelConfigError, match=r"test_cfg must be a dict, got str"):
        check_test_cfg("whole", "test_cfg")
