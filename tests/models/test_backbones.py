"""State-dict layout of both backbones against the original DDP models (tests/fixtures/keys/*.json)."""

import json
from pathlib import Path

import pytest
import torch

from ddpseg.models.backbones import ConvNeXt, SwinTransformer

KEYS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "keys"


def _convnext(arch: str) -> dict:
    # the backbone dict of configs/cityscapes/ddp_convnext_*.py, minus type and init_cfg
    return dict(
        arch=arch,
        out_indices=[0, 1, 2, 3],
        drop_path_rate=0.4 if arch != "small" else 0.3,
        layer_scale_init_value=1.0,
        gap_before_final_norm=False,
    )


def _swin(embed_dims: int, depths: list, num_heads: list, window_size: int, pretrain_img_size: int) -> dict:
    # the backbone dict of configs/ade/ddp_swin_*.py, minus type and init_cfg
    return dict(
        pretrain_img_size=pretrain_img_size,
        in_channels=3,
        embed_dims=embed_dims,
        patch_size=4,
        window_size=window_size,
        mlp_ratio=4,
        depths=depths,
        num_heads=num_heads,
        strides=(4, 2, 2, 2),
        out_indices=(0, 1, 2, 3),
        qkv_bias=True,
        qk_scale=None,
        patch_norm=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        use_abs_pos_embed=False,
        act_cfg=dict(type="GELU"),
        norm_cfg=dict(type="LN", requires_grad=True),
    )


CONFIGS = {
    "ddp_convnext_t_4x4_512x1024_160k_cityscapes": (ConvNeXt, _convnext("tiny")),
    "ddp_convnext_t_4x4_512x1024_5k_cityscapes_aligned": (ConvNeXt, _convnext("tiny")),
    "ddp_convnext_s_4x4_512x1024_160k_cityscapes": (ConvNeXt, _convnext("small")),
    "ddp_convnext_b_4x4_512x1024_160k_cityscapes": (ConvNeXt, _convnext("base")),
    "ddp_convnext_l_4x4_512x1024_160k_cityscapes": (ConvNeXt, _convnext("large")),
    "ddp_convnext_l_4x4_512x1024_5k_cityscapes_aligned": (ConvNeXt, _convnext("large")),
    "ddp_swin_t_2x8_512x512_160k_ade20k": (SwinTransformer, _swin(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224)),
    "ddp_swin_s_2x8_512x512_160k_ade20k": (SwinTransformer, _swin(96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224)),
    "ddp_swin_b_2x8_512x512_160k_ade20k": (SwinTransformer, _swin(128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384)),
    "ddp_swin_l_2x8_512x512_160k_ade20k": (SwinTransformer, _swin(192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384)),
}


def test_every_key_fixture_has_a_config_entry():
    assert {p.stem.removeprefix("keys_") for p in KEYS_DIR.glob("keys_*.json")} == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_matches_original_keys_shapes_and_order(name):
    fixture = json.loads((KEYS_DIR / f"keys_{name}.json").read_text())
    expected = [
        (key[len("backbone."):], tuple(shape), fixture["state_dict_dtypes"].get(key, "float32"))  # only non-float32 listed
        for key, shape in fixture["state_dict"].items()
        if key.startswith("backbone.")
    ]
    cls, kwargs = CONFIGS[name]
    with torch.device("meta"):
        model = cls(**kwargs)
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert {k for k, _, _ in got} ^ {k for k, _, _ in expected} == set()
    assert got == expected


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_feature_channels_are_the_out_norm_widths(name):
    cls, kwargs = CONFIGS[name]
    with torch.device("meta"):
        model = cls(**kwargs)
    assert model.feature_channels == [getattr(model, f"norm{i}").weight.shape[0] for i in range(4)]


def test_package_load_pretrained_dispatches_on_the_backbone_type():
    from ddpseg.models.backbones import load_pretrained

    convnext = ConvNeXt(arch=dict(depths=[1, 1, 1, 1], channels=[8, 16, 32, 64]), out_indices=[0, 1, 2, 3])
    swin = SwinTransformer(embed_dims=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 1, 1], window_size=4)
    for model in (convnext, swin):
        assert load_pretrained(model, {"model": model.state_dict()}, strict=True).complete
    with pytest.raises(TypeError, match="no converter for Linear"):
        load_pretrained(torch.nn.Linear(2, 2), {})


_TINY_SWIN = dict(type="SwinTransformer", embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7)


def test_training_build_initialises_swin_from_scratch_like_the_originals_init_weights():
    """tools/train.py of the original calls model.init_weights(): without a checkpoint, mmseg's Swin gets truncated
    normal (std 0.02) Linear weights and zero biases, not PyTorch's defaults; a test/demo build leaves them."""
    from ddpseg.models.build import build_backbone

    torch.manual_seed(0)
    trained = build_backbone(dict(_TINY_SWIN, init_cfg=None), load_pretrained=True)
    plain = build_backbone(dict(_TINY_SWIN, init_cfg=None), load_pretrained=False)
    for name, module in trained.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert abs(module.weight.std().item() - 0.02) < 0.004, name
            assert module.bias is None or not module.bias.any(), name
    fc = dict(plain.named_modules())["stages.0.blocks.0.ffn.layers.1"]
    assert fc.bias.abs().max().item() > 0  # PyTorch's default init, untouched


def test_backbone_pretrained_and_empty_pretrained_init_cfg_are_config_errors():
    from ddpseg.models.build import ModelConfigError, build_backbone

    with pytest.raises(ModelConfigError, match=r"model\.backbone\.pretrained is deprecated.*init_cfg"):
        build_backbone(dict(_TINY_SWIN, pretrained="swin.pth"))
    with pytest.raises(ModelConfigError, match=r"init_cfg is dict\(type='Pretrained'\) without a checkpoint"):
        build_backbone(dict(_TINY_SWIN, init_cfg=dict(type="Pretrained", checkpoint=None)), load_pretrained=True)


def test_unreadable_pretrained_weights_are_clear_errors_naming_the_file_and_the_config_key(tmp_path):
    """--cfg-options model.backbone.init_cfg.checkpoint=FILE with a truncated, corrupt, empty or pickled-object file."""
    from safetensors.torch import save_file

    from ddpseg.engine.checkpoint import CheckpointError
    from ddpseg.models.build import build_backbone

    save_file(SwinTransformer(**{k: v for k, v in _TINY_SWIN.items() if k != "type"}).state_dict(),
              str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02" + bytes(range(7, 200)))
    (tmp_path / "notes.pth").write_text("downloaded an HTML page instead\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"state_dict": {}, "args": Path("x")}, tmp_path / "objects.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    cases = {
        "cut.safetensors": "is not a readable safetensors file (truncated",
        "corrupt.pth": "is a pickle but not a readable PyTorch checkpoint",
        "notes.pth": "is not a PyTorch checkpoint (neither a zip archive nor a pickle",
        "empty.pth": "is empty (0 bytes)",
        "objects.pth": "holds pickled Python objects other than tensors and plain containers",
        "list.pth": "holds a list, expected a dict of tensors",
        "missing.pth": "pretrained weights not found",
    }
    for name, message in cases.items():
        cfg = dict(_TINY_SWIN, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / name)))
        with pytest.raises(CheckpointError) as info:
            build_backbone(cfg, load_pretrained=True)
        text = str(info.value)
        assert text.startswith("model.backbone.init_cfg.checkpoint: ") and str(tmp_path / name) in text, text
        assert message in text and "pop from empty list" not in text and "weights_only" not in text, text
    cfg = dict(_TINY_SWIN, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "full.safetensors")))
    assert build_backbone(cfg, load_pretrained=True) is not None
