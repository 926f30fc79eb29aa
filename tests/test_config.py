import argparse
import copy
import json
import pickle
from pathlib import Path

import pytest

from ddpseg.config import (
    Config,
    ConfigDict,
    ConfigError,
    DictAction,
    check_bool,
    check_int,
    check_keys,
    check_number,
    parse_cfg_options,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALL_CONFIG_FILES = sorted(CONFIGS.rglob("*.py"))
MODEL_CONFIGS = sorted((CONFIGS / "cityscapes").glob("*.py")) + sorted((CONFIGS / "ade").glob("*.py"))
CONVNEXT_T = CONFIGS / "cityscapes" / "ddp_convnext_t_4x4_512x1024_160k_cityscapes.py"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------
# The shipped config files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_without_leftover_merge_markers(path):
    cfg = Config.fromfile(path)
    assert len(cfg) > 0
    assert "_base_" not in cfg
    assert "_delete_" not in json.dumps(cfg.to_dict())


def test_published_configs_are_all_present():
    names = {p.stem for p in MODEL_CONFIGS}
    expected = {f"ddp_convnext_{s}_4x4_512x1024_160k_cityscapes" for s in "tsbl"}
    expected |= {f"ddp_convnext_{s}_4x4_512x1024_5k_cityscapes_aligned" for s in "tl"}
    expected |= {f"ddp_swin_{s}_4x4_512x1024_160k_cityscapes" for s in "tsbl"}
    expected |= {f"ddp_swin_{s}_2x8_512x512_160k_ade20k" for s in "tsbl"}
    assert names == expected


@pytest.mark.parametrize("keys_file", sorted((FIXTURES / "keys").glob("keys_*.json")), ids=lambda p: p.stem)
def test_config_widths_match_the_original_models_state_dict_shapes(keys_file):
    """The parity key layouts were produced by building the original configs; our values must give the same shapes."""
    layout = json.loads(keys_file.read_text())
    config_path = CONFIGS / layout["config"].removeprefix("segmentation/configs/")
    cfg = Config.fromfile(config_path)
    shapes = layout["state_dict"]
    assert cfg.model.type == layout["model_type"]
    assert cfg.model.backbone.type.split(".")[-1] == layout["backbone_type"]
    lateral_in = [shapes[f"neck.0.lateral_convs.{i}.conv.weight"][1] for i in range(4)]
    assert cfg.model.neck[0].in_channels == lateral_in
    assert cfg.model.decode_head.num_classes == shapes["decode_head.conv_seg.weight"][0]
    assert cfg.model.auxiliary_head.num_classes == shapes["auxiliary_head.conv_seg.weight"][0]
    num_layers = len({k.split(".")[3] for k in shapes if k.startswith("decode_head.encoder.layers.")})
    assert cfg.model.decode_head.encoder.num_layers == num_layers
    # Backbone size: blocks per stage from the key names, widths / heads / window from the shapes.
    backbone = cfg.model.backbone
    if layout["backbone_type"] == "SwinTransformer":
        depths = [len({k.split(".")[4] for k in shapes if k.startswith(f"backbone.stages.{i}.blocks.")})
                  for i in range(4)]
        assert backbone.depths == depths
        assert backbone.embed_dims == shapes["backbone.patch_embed.projection.weight"][0]
        tables = [shapes[f"backbone.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table"] for i in range(4)]
        assert backbone.num_heads == [t[1] for t in tables]
        assert all(t[0] == (2 * backbone.window_size - 1) ** 2 for t in tables)
    else:
        depths = [len({k.split(".")[3] for k in shapes if k.startswith(f"backbone.stages.{i}.")}) for i in range(4)]
        convnext_depths = {"tiny": [3, 3, 9, 3], "small": [3, 3, 27, 3], "base": [3, 3, 27, 3], "large": [3, 3, 27, 3]}
        assert convnext_depths[backbone.arch] == depths
        assert shapes["backbone.downsample_layers.0.0.weight"][0] == lateral_in[0]


@pytest.mark.parametrize("size, embed_dims, depths, num_heads, window_size, pretrain_img_size", [
    ("t", 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    ("s", 96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    ("b", 128, [2, 2, 18, 2], [4, 8, 16, 32], 7, 224),
    ("l", 192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
])
def test_swin_cityscapes_variants_as_published(size, embed_dims, depths, num_heads, window_size, pretrain_img_size):
    """No parity key layout covers the Swin Cityscapes configs, so their sizes are checked here."""
    cfg = Config.fromfile(CONFIGS / "cityscapes" / f"ddp_swin_{size}_4x4_512x1024_160k_cityscapes.py")
    backbone = cfg.model.backbone
    assert (backbone.embed_dims, backbone.depths, backbone.num_heads) == (embed_dims, depths, num_heads)
    assert (backbone.window_size, backbone.pretrain_img_size, backbone.drop_path_rate) == (
        window_size, pretrain_img_size, 0.3)
    assert cfg.model.neck[0].in_channels == [embed_dims * 2**i for i in range(4)]
    assert backbone.init_cfg.checkpoint == cfg.checkpoint_file
    assert "custom_imports" not in cfg and cfg.find_unused_parameters is True


@pytest.mark.parametrize("size, drop_path_rate", [("t", 0.4), ("s", 0.3), ("b", 0.4), ("l", 0.4)])
def test_convnext_cityscapes_drop_path_as_published(size, drop_path_rate):
    cfg = Config.fromfile(CONFIGS / "cityscapes" / f"ddp_convnext_{size}_4x4_512x1024_160k_cityscapes.py")
    assert cfg.model.backbone.drop_path_rate == drop_path_rate
    assert cfg.model.backbone.init_cfg.checkpoint == cfg.checkpoint_file


def test_convnext_t_cityscapes_values_match_the_original():
    cfg = Config.fromfile(CONVNEXT_T)
    model = cfg.model
    assert (model.type, model.timesteps, model.bit_scale) == ("DDP", 3, 0.01)
    assert model.backbone.to_dict() == {
        "type": "mmcls.ConvNeXt",
        "arch": "tiny",
        "out_indices": [0, 1, 2, 3],
        "drop_path_rate": 0.4,
        "layer_scale_init_value": 1.0,
        "gap_before_final_norm": False,
        "init_cfg": {"type": "Pretrained", "checkpoint": cfg.checkpoint_file, "prefix": "backbone."},
    }
    assert cfg.checkpoint_file.endswith("convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth")
    assert [n.type for n in model.neck] == ["FPN", "MultiStageMerging"]
    assert model.neck[0].norm_cfg == {"type": "GN", "num_groups": 32}
    head = model.decode_head
    assert (head.type, head.channels, head.num_classes, head.num_feature_levels) == ("DeformableHeadWithTime", 256, 19, 1)
    layer = head.encoder.transformerlayers
    assert (head.encoder.num_layers, layer.use_time_mlp) == (6, True)
    assert layer.attn_cfgs.to_dict() == {
        "type": "MultiScaleDeformableAttention", "embed_dims": 256, "num_levels": 1, "num_heads": 8, "dropout": 0.0,
    }
    assert layer.ffn_cfgs.feedforward_channels == 1024
    assert layer.operation_order == ("self_attn", "norm", "ffn", "norm")
    assert head.positional_encoding.to_dict() == {
        "type": "SinePositionalEncoding", "num_feats": 128, "normalize": True, "offset": -0.5,
    }
    assert model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert model.test_cfg == {"mode": "whole"}
    # _delete_ in the child replaced the base schedule's SGD and poly-0.9 settings entirely.
    assert cfg.optimizer.to_dict() == {
        "type": "AdamW",
        "lr": 6e-05,
        "betas": (0.9, 0.999),
        "weight_decay": 0.01,
        "paramwise_cfg": {
            "custom_keys": {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0}, "head": {"lr_mult": 1.0}}
        },
    }
    assert cfg.lr_config.to_dict() == {
        "policy": "poly", "warmup": "linear", "warmup_iters": 1500, "warmup_ratio": 1e-06,
        "power": 1.0, "min_lr": 0.0, "by_epoch": False,
    }
    # Plain dicts merged key-wise with the bases.
    assert cfg.evaluation == {"interval": 16000, "metric": "mIoU", "pre_eval": True, "save_best": "mIoU"}
    assert (cfg.data.samples_per_gpu, cfg.data.workers_per_gpu) == (4, 4)
    assert cfg.runner == {"type": "IterBasedRunner", "max_iters": 160000}
    assert cfg.checkpoint_config == {"by_epoch": False, "interval": 16000}
    assert cfg.find_unused_parameters is True
    assert cfg.custom_imports == {"imports": "mmcls.models", "allow_failed_imports": False}
    train = cfg.data.train
    assert (train.type, train.data_root, train.img_dir, train.ann_dir) == (
        "CityscapesDataset", "data/cityscapes/", "leftImg8bit/train", "gtFine/train")
    assert [step.type for step in train.pipeline] == [
        "LoadImageFromFile", "LoadAnnotations", "Resize", "RandomCrop", "RandomFlip", "PhotoMetricDistortion",
        "Normalize", "Pad", "DefaultFormatBundle", "Collect"]
    assert train.pipeline[2].to_dict() == {"type": "Resize", "img_scale": (2048, 1024), "ratio_range": (0.5, 2.0)}
    assert train.pipeline[3].crop_size == (512, 1024)
    assert train.pipeline[6].to_dict() == {
        "type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": True}
    test_aug = cfg.data.test.pipeline[1]
    assert (test_aug.type, test_aug.img_scale, test_aug.flip) == ("MultiScaleFlipAug", (2048, 1024), False)
    assert cfg.data.val.img_dir == "leftImg8bit/val"


def test_aligned_and_ade_configs_differ_from_the_base_recipe_as_published():
    aligned = Config.fromfile(CONFIGS / "cityscapes" / "ddp_convnext_l_4x4_512x1024_5k_cityscapes_aligned.py")
    assert (aligned.model.type, aligned.model.timesteps, aligned.optimizer.lr) == ("SelfAlignedDDP", 10, 6e-06)
    assert aligned.model.backbone.init_cfg is None
    assert aligned.load_from.endswith("ddp_convnext_l_4x4_512x1024_160k_cityscapes.pth")
    assert (aligned.runner.max_iters, aligned.evaluation.interval) == (5000, 500)
    ade = Config.fromfile(CONFIGS / "ade" / "ddp_swin_l_2x8_512x512_160k_ade20k.py")
    assert ade.model.accumulation is True
    assert (ade.model.backbone.embed_dims, ade.model.backbone.window_size) == (192, 12)
    assert ade.model.backbone.num_heads == [6, 12, 24, 48]
    assert ade.optimizer_config == {"grad_clip": {"max_norm": 0.1, "norm_type": 2}}
    assert "find_unused_parameters" not in ade
    assert ade.data.train.pipeline[1].reduce_zero_label is True


def test_quickstart_config_uses_the_mini_fixture_model():
    quick = Config.fromfile(CONFIGS / "quickstart" / "ddp_convnext_mini_synthetic.py")
    fixture = Config.fromfile(FIXTURES / "mini_convnext_config.py")
    assert quick.model == fixture.model
    assert quick.data.train.data_root == "data/synthetic_cityscapes/"
    assert quick.data.train.pipeline[3].crop_size == (128, 256)
    assert quick.data.test.pipeline[1].img_scale == (512, 256)
    assert (quick.data.samples_per_gpu, quick.data.workers_per_gpu) == (2, 0)
    assert (quick.runner.max_iters, quick.checkpoint_config.interval, quick.evaluation.interval) == (800, 200, 200)
    assert quick.lr_config.warmup_iters == 50
    assert quick.optimizer.type == "AdamW" and "momentum" not in quick.optimizer


# --------------------------------------------------------------------------------------------------
# Inheritance
# --------------------------------------------------------------------------------------------------


def test_child_merges_over_base_dicts_and_replaces_other_values(tmp_path):
    write(tmp_path, "base.py", "a = dict(x=1, y=dict(p=1, q=2))\nb = [1, 2]\nc = 'base'\n")
    child = write(tmp_path, "child.py", "_base_ = './base.py'\na = dict(y=dict(q=3), z=4)\nb = [9]\n")
    cfg = Config.fromfile(child)
    assert cfg.to_dict() == {"a": {"x": 1, "y": {"p": 1, "q": 3}, "z": 4}, "b": [9], "c": "base"}
    assert cfg.filename == str(child.resolve())
    assert "a = dict(x=1" in cfg.text and "_base_ = './base.py'" in cfg.text


def test_delete_flag_replaces_the_base_dict_and_is_removed(tmp_path):
    write(tmp_path, "base.py", "opt = dict(type='SGD', momentum=0.9, inner=dict(k=1))\n")
    child = write(tmp_path, "child.py", "_base_ = ['base.py']\nopt = dict(_delete_=True, type='AdamW')\n"
                                        "new = dict(_delete_=True, v=dict(_delete_=True, w=1))\n")
    cfg = Config.fromfile(child)
    assert cfg.opt == {"type": "AdamW"}
    assert cfg.new == {"v": {"w": 1}}


def test_inheritance_chains_and_list_of_bases_in_subdirectories(tmp_path):
    write(tmp_path, "_base_/models/m.py", "model = dict(type='A', depth=1)\n")
    write(tmp_path, "_base_/runtime.py", "log_level = 'INFO'\n")
    write(tmp_path, "mid/mid.py", "_base_ = ['../_base_/models/m.py', '../_base_/runtime.py']\nmodel = dict(depth=2)\n")
    leaf = write(tmp_path, "leaf/leaf.py", "_base_ = '../mid/mid.py'\nmodel = dict(width=3)\n")
    assert Config.fromfile(leaf).to_dict() == {"model": {"type": "A", "depth": 2, "width": 3}, "log_level": "INFO"}


def test_key_defined_by_two_bases_is_an_error_naming_both_files(tmp_path):
    write(tmp_path, "a.py", "x = 1\nshared = dict(k=1)\n")
    write(tmp_path, "b.py", "shared = dict(k=2)\n")
    child = write(tmp_path, "child.py", "_base_ = ['a.py', 'b.py']\n")
    with pytest.raises(ConfigError, match=r"'shared'.*a\.py.*b\.py"):
        Config.fromfile(child)


def test_missing_base_names_the_base_and_the_referencing_config(tmp_path):
    child = write(tmp_path, "child.py", "_base_ = '../_base_/nope.py'\n")
    with pytest.raises(FileNotFoundError, match=r"nope\.py.*child\.py"):
        Config.fromfile(child)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        Config.fromfile(tmp_path / "absent.py")


def test_dict_in_child_over_non_dict_in_base_needs_delete(tmp_path):
    write(tmp_path, "base.py", "pipeline = [dict(type='A')]\n")
    child = write(tmp_path, "child.py", "_base_ = 'base.py'\npipeline = dict(type='B')\n")
    with pytest.raises(ConfigError, match=r"'pipeline' is a dict in the child config but a list.*_delete_=True"):
        Config.fromfile(child)
    fixed = write(tmp_path, "fixed.py", "_base_ = 'base.py'\npipeline = dict(_delete_=True, type='B')\n")
    assert Config.fromfile(fixed).pipeline == {"type": "B"}


def test_circular_inheritance_is_reported(tmp_path):
    write(tmp_path, "a.py", "_base_ = 'b.py'\n")
    write(tmp_path, "b.py", "_base_ = 'a.py'\n")
    with pytest.raises(ConfigError, match="circular"):
        Config.fromfile(tmp_path / "a.py")


def test_imports_functions_and_dunders_are_not_config_keys(tmp_path):
    path = write(tmp_path, "c.py", "import os\nfrom math import sqrt\ndef helper():\n    return 2\n"
                                   "class Thing:\n    pass\nvalue = helper() + int(sqrt(4))\n"
                                   "custom_imports = dict(imports='mmcls.models', allow_failed_imports=False)\n")
    cfg = Config.fromfile(path)
    assert set(cfg) == {"value", "custom_imports"}
    assert cfg.value == 4


def test_predefined_file_variables_are_substituted_and_base_references_rejected(tmp_path):
    path = write(tmp_path, "exp_name.py", "work_dir = './work_dirs/{{ fileBasenameNoExtension }}'\n")
    assert Config.fromfile(path).work_dir == "./work_dirs/exp_name"
    ref = write(tmp_path, "ref.py", "_base_ = 'exp_name.py'\nx = {{_base_.work_dir}}\n")
    with pytest.raises(ConfigError, match=r"_base_\.work_dir.*not supported"):
        Config.fromfile(ref)


def test_json_config_with_python_base(tmp_path):
    write(tmp_path, "base.py", "model = dict(type='A', depth=1)\n")
    path = write(tmp_path, "c.json", json.dumps({"_base_": "base.py", "model": {"depth": 5}}))
    assert Config.fromfile(path).to_dict() == {"model": {"type": "A", "depth": 5}}
    with pytest.raises(ConfigError, match="must end in"):
        Config.fromfile(write(tmp_path, "c.yaml", "a: 1\n"))


def test_reserved_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"'filename' is reserved.*c\.py"):
        Config.fromfile(write(tmp_path, "c.py", "filename = 'x'\n"))
    cfg = Config({"a": 1})
    with pytest.raises(ConfigError, match="'text' is reserved"):
        cfg.text = "x"
    with pytest.raises(ConfigError, match="'pretty_text' is reserved"):
        cfg.merge_from_dict({"pretty_text": 1})
    assert cfg == {"a": 1}


def test_mini_fixture_config_loads():
    cfg = Config.fromfile(FIXTURES / "mini_convnext_config.py")
    assert cfg.model.backbone.arch == {"depths": [1, 1, 2, 1], "channels": [32, 64, 128, 256]}
    assert cfg.model.decode_head.encoder.num_layers == 2


# --------------------------------------------------------------------------------------------------
# Access, copies, writing back
# --------------------------------------------------------------------------------------------------


def test_attribute_item_and_get_access():
    cfg = Config({"model": {"backbone": {"type": "X"}, "items": [{"k": 1}]}})
    assert cfg.model.backbone.type == cfg["model"]["backbone"]["type"] == "X"
    assert isinstance(cfg.model["items"][0], ConfigDict) and cfg.model["items"][0].k == 1
    assert cfg.get("missing", 7) == 7 and cfg.model.get("backbone").type == "X"
    assert getattr(cfg.model, "missing", None) is None
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = cfg.model.missing
    cfg.model.backbone.depth = 50
    cfg.work_dir = "w"
    cfg["extra"] = {"a": 1}
    assert cfg.to_dict() == {
        "model": {"backbone": {"type": "X", "depth": 50}, "items": [{"k": 1}]}, "work_dir": "w", "extra": {"a": 1}}
    assert cfg.extra.a == 1
    assert type(cfg.to_dict()["model"]) is dict


def test_copy_and_deepcopy_are_independent_and_pickle_round_trips():
    cfg = Config({"model": {"depths": [1, 2]}}, filename="f.py", text="src")
    for other in (cfg.copy(), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other == cfg and other.filename == "f.py" and other.text == "src"
        other.model.depths.append(3)
        assert cfg.model.depths == [1, 2]


@pytest.mark.parametrize("path", [CONVNEXT_T, CONFIGS / "ade" / "ddp_swin_b_2x8_512x512_160k_ade20k.py",
                                  FIXTURES / "mini_convnext_config.py"], ids=lambda p: p.stem)
def test_python_dump_reloads_to_an_equal_config(path, tmp_path):
    cfg = Config.fromfile(path)
    out = tmp_path / "sub" / "dumped.py"
    text = cfg.dump(out)
    reloaded = Config.fromfile(out)
    assert reloaded.to_dict() == cfg.to_dict()
    assert reloaded.pretty_text == text
    assert max(len(line) for line in text.splitlines() if "https://" not in line) <= 80


def test_dump_of_awkward_values_round_trips(tmp_path):
    cfg = Config({"a": {"not an identifier": 1, 3: (1,), "class": None}, "b": [float("inf"), -0.5, "it's"],
                  "c": ()})
    cfg.dump(tmp_path / "x.py")
    assert Config.fromfile(tmp_path / "x.py") == cfg
    with pytest.raises(ConfigError, match="'bad.obj'"):
        Config({"bad": {"obj": object()}}).pretty_text


def test_json_dump_round_trips_with_tuples_as_lists(tmp_path):
    cfg = Config.fromfile(FIXTURES / "mini_convnext_config.py")
    cfg.dump(tmp_path / "c.json")
    reloaded = Config.fromfile(tmp_path / "c.json")
    assert reloaded.model.decode_head.encoder.transformerlayers.operation_order == ["self_attn", "norm", "ffn", "norm"]
    assert json.loads(json.dumps(reloaded.to_dict())) == json.loads(json.dumps(cfg.to_dict()))
    with pytest.raises(ConfigError, match=r"\.py or \.json"):
        cfg.dump(tmp_path / "c.yaml")


# --------------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("50", 50), ("-3", -3), ("0.5", 0.5), ("1e-4", 1e-4), ("True", True), ("false", False), ("None", None),
    ("abc", "abc"), ("", ""), ("'12'", "12"), ('"a b"', "a b"), ("[1,2]", [1, 2]), ("[]", []), ("()", ()),
    ("(512, 1024)", (512, 1024)), ("(1,)", (1,)), ("1,2,x", [1, 2, "x"]), ("[(1,2),[a,b],c]", [(1, 2), ["a", "b"], "c"]),
    ("(1,2),(3,4)", [(1, 2), (3, 4)]), ("[1,2]x", "[1,2]x"), ("path/to/x.pth", "path/to/x.pth"),
])
def test_option_values_are_parsed_like_mmcv(text, value):
    parsed = parse_cfg_options([f"k={text}"])["k"]
    assert parsed == value and type(parsed) is type(value)


def test_malformed_options_are_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        parse_cfg_options(["no_equals_sign"])
    with pytest.raises(ConfigError, match="unbalanced"):
        parse_cfg_options(["k=[1,2"])
    assert parse_cfg_options(["url=http://x?a=b"]) == {"url": "http://x?a=b"}


def test_dict_option_values_are_python_literals():
    assert parse_cfg_options(["data.test.label_map={1:0,2:1}"]) == {"data.test.label_map": {1: 0, 2: 1}}
    assert parse_cfg_options(["k=[{'a': 1},{'b': (2, 3)}]"]) == {"k": [{"a": 1}, {"b": (2, 3)}]}
    with pytest.raises(ConfigError, match=r"option 'k=\{1:x\}': \{1:x\} is not a dict of plain values"):
        parse_cfg_options(["k={1:x}"])
    with pytest.raises(ConfigError, match="is not a dict"):
        parse_cfg_options(["k={1,2}"])


def test_merge_from_dict_sets_dotted_keys_and_list_elements():
    cfg = Config.fromfile(CONVNEXT_T)
    cfg.merge_from_dict(parse_cfg_options([
        "model.backbone.drop_path_rate=0.1", "data.samples_per_gpu=2", "data.train.pipeline.2.img_scale=(1024,512)",
        "model.neck.1.out_channels=128", "work_dir=./w", "optimizer.paramwise_cfg.custom_keys.norm.decay_mult=1.0",
    ]))
    assert cfg.model.backbone.drop_path_rate == 0.1 and cfg.model.backbone.arch == "tiny"
    assert cfg.data.samples_per_gpu == 2 and cfg.data.workers_per_gpu == 4
    assert cfg.data.train.pipeline[2].to_dict() == {"type": "Resize", "img_scale": (1024, 512), "ratio_range": (0.5, 2.0)}
    assert cfg.data.val.pipeline[1].img_scale == (2048, 1024)
    assert cfg.model.neck[1].out_channels == 128 and cfg.model.neck[0].out_channels == 256
    assert cfg.work_dir == "./w"
    assert cfg.optimizer.paramwise_cfg.custom_keys.norm.decay_mult == 1.0
    assert isinstance(cfg.model, ConfigDict)


def test_merge_from_dict_errors_name_the_path():
    cfg = Config({"pipeline": [{"type": "A"}], "model": {"type": "X"}})
    with pytest.raises(ConfigError, match="index 5 is out of range for 'pipeline'"):
        cfg.merge_from_dict({"pipeline.5.type": "B"})
    with pytest.raises(ConfigError, match="'pipeline' is a list"):
        cfg.merge_from_dict({"pipeline.first.type": "B"})
    with pytest.raises(ConfigError, match="'model.type' is a dict"):
        cfg.merge_from_dict({"model.type.x": 1})
    with pytest.raises(ConfigError, match="'pipeline' is a dict"):
        cfg.merge_from_dict({"pipeline.0.type": "B"}, allow_list_keys=False)
    assert cfg.to_dict() == {"pipeline": [{"type": "A"}], "model": {"type": "X"}}


def test_dict_action_collects_cfg_options():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    args = parser.parse_args(["--cfg-options", "a.b=1", "c=[1,2]"])
    assert args.cfg_options == {"a.b": 1, "c": [1, 2]}


# --------------------------------------------------------------------------------------------------
# Key validation for builders
# --------------------------------------------------------------------------------------------------


def test_check_keys_names_unknown_key_section_and_close_match():
    allowed = ["type", "in_channels", "channels", "num_classes"]
    check_keys({"type": "FCNHead", "channels": 8}, allowed, "model.auxiliary_head")
    with pytest.raises(ConfigError) as info:
        check_keys({"type": "FCNHead", "num_clases": 19}, allowed, "model.auxiliary_head")
    message = str(info.value)
    assert "'num_clases'" in message and "model.auxiliary_head" in message
    assert "did you mean 'num_classes'" in message and "allowed keys: channels, in_channels" in message
    with pytest.raises(ConfigError, match="must be a dict"):
        check_keys([1], allowed, "model.neck")


def test_check_keys_raises_the_given_config_error_subclass():
    class SectionError(ConfigError):
        pass

    with pytest.raises(SectionError, match="unknown key 'x' in s"):
        check_keys({"x": 1}, ["y"], "s", error=SectionError)


def test_typed_value_checks_name_the_key_the_value_and_what_was_expected():
    assert check_int(3, "a.b", minimum=1) == 3 and check_number(1, "a.b") == 1.0 and check_bool(False, "a.b") is False
    cases = [
        (lambda: check_int("two", "data.samples_per_gpu", minimum=1), r"data\.samples_per_gpu must be an integer >= 1, got 'two'"),
        (lambda: check_int(2.0, "a.n"), r"a\.n must be an integer, got 2\.0"),
        (lambda: check_int(True, "a.n"), r"a\.n must be an integer, got True"),
        (lambda: check_int(5, "a.n", minimum=0, maximum=3), r"a\.n must be an integer in \[0, 3\], got 5"),
        (lambda: check_number("0.01", "model.bit_scale"), r"model\.bit_scale must be a number, got '0\.01'"),
        (lambda: check_number(float("nan"), "a.x"), r"a\.x must be a number, got nan"),
        (lambda: check_number(-1, "a.x", minimum=0), r"a\.x must be a number >= 0, got -1$"),
        (lambda: check_bool("false", "a.flag"), r"a\.flag must be True or False, got 'false'"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()
