import pytest
import torch
from torch import nn

from ddpseg.engine.optimizer import OptimizerConfigError, build_optimizer, check_optimizer_config


class Net(nn.Module):
    """Names the DDP configs' custom keys look for, plus a top-level parameter and a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))  # top level: mmcv sees it as ".scale"
        self.backbone = nn.Module()
        self.backbone.conv = nn.Conv2d(4, 8, 3)
        self.backbone.dwconv = nn.Conv2d(8, 8, 3, groups=8)
        self.backbone.bn = nn.BatchNorm2d(8)
        self.backbone.ln = nn.LayerNorm(8)
        self.backbone.pos_block = nn.Conv2d(8, 8, 3, groups=8)
        self.backbone.norm1 = nn.Linear(8, 8)  # a "norm" by name only
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(8, 3, 1)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def groups_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    by_id = {id(g["params"][0]): g for g in optimizer.param_groups}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_ddp_custom_keys_give_zero_decay_to_norm_and_pos_block_and_one_group_per_parameter():
    model = Net()
    cfg = dict(
        type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01,
        paramwise_cfg=dict(custom_keys={"pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0),
                                        "head": dict(lr_mult=1.0)}),
    )
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == len(list(model.parameters()))
    groups = groups_by_name(model, optimizer)
    zero_decay = {"backbone.pos_block.weight", "backbone.pos_block.bias", "backbone.norm1.weight", "backbone.norm1.bias"}
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(6e-5), name
        assert group["weight_decay"] == (0.0 if name in zero_decay else 0.01), name
    # The BatchNorm/LayerNorm modules are not named "norm": without norm_decay_mult they keep weight decay.
    assert groups["backbone.bn.weight"]["weight_decay"] == 0.01


def test_longest_custom_key_wins_and_equal_lengths_go_alphabetically():
    model = Net()
    custom = {
        "head": dict(lr_mult=2.0),
        "decode_head": dict(lr_mult=3.0),  # longer than "head": wins for decode_head.*
        "conv": dict(lr_mult=5.0),
        "bone": dict(lr_mult=7.0),  # same length as "conv": "bone" < "conv" alphabetically, so it wins
        ".scale": dict(lr_mult=11.0),  # matches the top-level parameter only through mmcv's leading dot
    }
    optimizer = build_optimizer(model, dict(type="SGD", lr=1.0, weight_decay=0.1, paramwise_cfg=dict(custom_keys=custom)))
    groups = groups_by_name(model, optimizer)
    assert groups["decode_head.conv_seg.weight"]["lr"] == 3.0
    assert groups["backbone.conv.weight"]["lr"] == 7.0
    assert groups["backbone.dwconv.bias"]["lr"] == 7.0
    assert groups["scale"]["lr"] == 11.0
    assert groups["frozen.weight"]["lr"] == 1.0  # frozen parameters get a plain group


def test_bias_norm_and_depthwise_multipliers_follow_mmcv_precedence():
    model = Net()
    paramwise = dict(bias_lr_mult=2.0, bias_decay_mult=0.5, norm_decay_mult=0.0, dwconv_decay_mult=0.25)
    optimizer = build_optimizer(model, dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1.0, paramwise_cfg=paramwise))
    groups = groups_by_name(model, optimizer)
    expected = {
        "backbone.conv.weight": (0.1, 1.0),
        "backbone.conv.bias": (0.2, 0.5),
        "backbone.dwconv.weight": (0.1, 0.25),
        "backbone.dwconv.bias": (0.2, 0.25),  # depth-wise decay rule comes before the bias rule
        "backbone.bn.weight": (0.1, 0.0),
        "backbone.bn.bias": (0.1, 0.0),  # no bias_lr_mult inside norm layers
        "backbone.ln.bias": (0.1, 0.0),
        "backbone.norm1.bias": (0.2, 0.5),  # a Linear, whatever its name
    }
    for name, (lr, wd) in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["weight_decay"] == pytest.approx(wd), name


def test_without_paramwise_cfg_all_parameters_share_one_group():
    model = Net()
    optimizer = build_optimizer(model, dict(type="Adam", lr=1e-3))
    assert len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))


def test_bypass_duplicate_skips_a_shared_module():
    model = Net()
    model.shared = model.backbone.conv
    with pytest.raises(ValueError):
        build_optimizer(model, dict(type="SGD", lr=0.1, paramwise_cfg=dict(bias_lr_mult=1.0)))
    with pytest.warns(UserWarning, match="shared"):
        optimizer = build_optimizer(model, dict(type="SGD", lr=0.1, paramwise_cfg=dict(bypass_duplicate=True)))
    assert len(optimizer.param_groups) == len(list(model.parameters()))


def test_bad_optimizer_configs_raise_clear_errors():
    model = Net()
    with pytest.raises(ValueError, match="'LAMB'"):
        build_optimizer(model, dict(type="LAMB", lr=1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        build_optimizer(model, dict(type="SGD", lr=1.0, paramwise_cfg=dict(custom_keys={"x": dict(decay_mult=0.0)})))
    with pytest.raises(OptimizerConfigError, match=r"unknown key 'bias_lr_mul' \(did you mean 'bias_lr_mult'\?\)"):
        build_optimizer(model, dict(type="SGD", lr=1.0, paramwise_cfg=dict(bias_lr_mul=2.0)))


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(type="AdamW", lr=1e-3, weight_decayy=1),
         r"unknown key 'weight_decayy' \(did you mean 'weight_decay'\?\) in optimizer \(AdamW\)"),
        (dict(type="SGD", lr=0.1, betas=(0.9, 0.99)), r"unknown key 'betas' in optimizer \(SGD\); allowed keys: .*momentum"),
        (dict(type="AdamW", lr="fast"), r"optimizer\.lr must be a number >= 0, got 'fast'"),
        (dict(type="AdamW", lr=1e-3, betas=0.9), r"optimizer\.betas must be a pair of numbers"),
        (dict(type="AdamW", lr=1e-3, amsgrad="yes"), r"optimizer\.amsgrad must be True or False, got 'yes'"),
        (dict(type="SGD"), "must set 'lr'"),
        (dict(type="SGD", lr=0.1, constructor="LayerDecayOptimizerConstructor"), "optimizer.constructor"),
        (dict(type="SGD", lr=0.1, paramwise_cfg=dict(bias_lr_mult="2")), r"optimizer\.paramwise_cfg\.bias_lr_mult must be a number"),
        (dict(type="SGD", lr=0.1, weight_decay=0.1, paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult="0")})),
         r"custom_keys\['norm'\]\.decay_mult must be a number"),
        ("AdamW", "optimizer must be a dict"),
    ],
)
def test_optimizer_config_errors_name_the_key_before_anything_is_built(cfg, message):
    with pytest.raises(OptimizerConfigError, match=message):
        check_optimizer_config(cfg)
    with pytest.raises(OptimizerConfigError, match=message):
        build_optimizer(Net(), cfg)


def test_every_constructor_argument_and_mmcv_constructor_key_is_accepted():
    check_optimizer_config(dict(type="SGD", lr=0.1, momentum=0.9, dampening=0, weight_decay=1e-4, nesterov=True,
                                constructor="DefaultOptimizerConstructor"))
    optimizer = build_optimizer(Net(), dict(type="AdamW", lr=1e-3, betas=[0.9, 0.99], eps=1e-6, amsgrad=True,
                                            constructor="DefaultOptimizerConstructor"))
    assert optimizer.defaults["amsgrad"] is True and tuple(optimizer.defaults["betas"]) == (0.9, 0.99)


def test_param_name_fn_matches_custom_keys_against_the_original_names():
    model = Net()
    model.neck = nn.Module()
    model.neck.norm = nn.GroupNorm(2, 8)  # ddpseg's name; the original called this module "gn"
    cfg = dict(type="AdamW", lr=1.0, weight_decay=0.01, paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0)}))
    renamed = build_optimizer(model, cfg)
    original = build_optimizer(model, cfg, param_name_fn=lambda name: name.replace("neck.norm.", "neck.gn."))
    assert groups_by_name(model, renamed)["neck.norm.weight"]["weight_decay"] == 0.0
    assert groups_by_name(model, original)["neck.norm.weight"]["weight_decay"] == 0.01
    assert groups_by_name(model, original)["backbone.norm1.weight"]["weight_decay"] == 0.0
