"""Swin Transformer: mmseg 0.x behaviour (padding, shifted windows, merging order), init, pretrained weights."""

import re

import pytest
import torch
import torch.nn.functional as F

from ddpseg.models.backbones import SwinTransformer, swin_checkpoint
from ddpseg.models.backbones.swin import (
    PatchMerging,
    convert_pretrained,
    load_pretrained,
    relative_position_index,
    shifted_window_mask,
)

TINY = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7, drop_path_rate=0.2)


def tiny(**overrides) -> SwinTransformer:
    torch.manual_seed(0)
    model = SwinTransformer(**{**TINY, **overrides})
    model.init_weights()
    for name, p in model.named_parameters():  # give the zero-initialised bias tables some content
        if "relative_position_bias_table" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model


@pytest.mark.parametrize(
    "size, expected",
    [
        ((224, 224), [(56, 56), (28, 28), (14, 14), (7, 7)]),
        ((120, 200), [(30, 50), (15, 25), (8, 13), (4, 7)]),
        ((512, 683), [(128, 171), (64, 86), (32, 43), (16, 22)]),
    ],
)
def test_output_shapes_round_odd_sizes_up(size, expected):
    model = tiny().eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [tuple(o.shape[-2:]) for o in outs] == expected
    assert [o.shape[1] for o in outs] == model.feature_channels == [16, 32, 64, 128]
    assert all(o.is_contiguous() for o in outs)


def test_relative_position_index_matches_mmseg_double_step_construction():
    def double_step_seq(step1, len1, step2, len2):
        return (torch.arange(0, step1 * len1, step1)[:, None] + torch.arange(0, step2 * len2, step2)[None, :]).reshape(1, -1)

    for w in (2, 7, 12):
        seq = double_step_seq(2 * w - 1, w, 1, w)
        assert torch.equal(relative_position_index(w), (seq + seq.T).flip(1))


@pytest.mark.parametrize("height, width, window, shift", [(14, 21, 7, 3), (7, 7, 7, 3), (24, 12, 12, 6), (8, 12, 4, 2)])
def test_shift_mask_separates_tokens_that_wrapped_around(height, width, window, shift):
    # independent description: inside one window of the rolled map, two tokens may attend to each
    # other iff, along each axis, both or neither came from the strip that the roll wrapped around
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    wrapped_y, wrapped_x = ys >= height - shift, xs >= width - shift
    expected = []
    for wy in range(height // window):
        for wx in range(width // window):
            rows = slice(wy * window, (wy + 1) * window)
            cols = slice(wx * window, (wx + 1) * window)
            ay, ax = wrapped_y[rows, cols].flatten(), wrapped_x[rows, cols].flatten()
            same = (ay[:, None] == ay[None, :]) & (ax[:, None] == ax[None, :])
            expected.append(torch.where(same, 0.0, -100.0))
    assert torch.equal(shifted_window_mask(height, width, window, shift), torch.stack(expected))


def reference_window_attention(msa, x, height, width):
    """Token-by-token (shifted) window attention on an already padded (1, H·W, C) map."""
    ws, s, attn = msa.window_size, msa.shift_size, msa.w_msa
    heads, c = attn.num_heads, x.shape[-1]
    q, k, v = attn.qkv(x)[0].view(height * width, 3, heads, c // heads).unbind(1)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    # coordinates in the rolled frame: rolled[c] = original[(c + s) % size]
    ry, rx = ((ys - s) % height).flatten(), ((xs - s) % width).flatten()
    window_id = (ry // ws) * (width // ws) + rx // ws
    wrapped = (ry >= height - s) * 2 + (rx >= width - s) if s else torch.zeros_like(ry)
    out = torch.empty(height * width, heads, c // heads)
    for p in range(height * width):
        members = (window_id == window_id[p]).nonzero().flatten()
        dy, dx = ry[p] % ws - ry[members] % ws, rx[p] % ws - rx[members] % ws
        bias = attn.relative_position_bias_table[(dy + ws - 1) * (2 * ws - 1) + dx + ws - 1]  # (m, heads)
        mask = torch.where(wrapped[members] == wrapped[p], 0.0, -100.0)
        logits = torch.einsum("hd,mhd->hm", q[p] * attn.scale, k[members]) + bias.T + mask
        out[p] = torch.einsum("hm,mhd->hd", logits.softmax(-1), v[members])
    return attn.proj(out.reshape(1, height * width, c))


@pytest.mark.parametrize("shift", [False, True])
def test_window_attention_matches_token_by_token_reference_on_padded_map(shift):
    block = tiny().stages[0].blocks[int(shift)].eval()  # block 1 of a stage is the shifted one
    msa = block.attn
    assert msa.shift_size == (3 if shift else 0)
    h, w = 10, 12  # padded to 14×14 inside the block
    x = torch.randn(1, h * w, 16)
    with torch.no_grad():
        ours = msa(x, (h, w))
        padded = F.pad(x.view(1, h, w, 16), (0, 0, 0, 2, 0, 4)).view(1, 14 * 14, 16)
        ref = reference_window_attention(msa, padded, 14, 14).view(1, 14, 14, 16)[:, :h, :w].reshape(1, h * w, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_padding_only_changes_windows_that_contain_padding():
    block = tiny().stages[0].blocks[0].eval()  # plain windows: outputs are local to each 7×7 window
    exact = torch.randn(1, 14, 14, 16)
    wider = torch.cat([exact, torch.randn(1, 14, 3, 16)], dim=2)  # 14×17 → padded to 14×21
    with torch.no_grad():
        a = block(exact.reshape(1, -1, 16), (14, 14)).view(1, 14, 14, 16)
        b = block(wider.reshape(1, -1, 16), (14, 17)).view(1, 14, 17, 16)
    torch.testing.assert_close(a, b[:, :, :14], atol=1e-6, rtol=1e-6)


def test_patch_merging_uses_unfold_order_and_corner_padding():
    torch.manual_seed(0)
    merge = PatchMerging(8, 16, norm_eps=1e-5)
    x = torch.randn(2, 5 * 7, 8)
    out, shape = merge(x, (5, 7))
    assert shape == (3, 4)
    grid = F.pad(x.view(2, 5, 7, 8).permute(0, 3, 1, 2), (0, 1, 0, 1))
    expected = merge.reduction(merge.norm(F.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)))
    torch.testing.assert_close(out, expected)


def test_converted_official_merging_weights_compute_the_same_function():
    torch.manual_seed(0)
    c = 8
    official = {
        "layers.0.downsample.norm.weight": torch.randn(4 * c),
        "layers.0.downsample.norm.bias": torch.randn(4 * c),
        "layers.0.downsample.reduction.weight": torch.randn(2 * c, 4 * c),
    }
    x = torch.randn(1, 6, 6, c)
    # the official PatchMerging: concatenate the four sub-grids, then LayerNorm and Linear
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1).view(1, -1, 4 * c)
    cat = F.layer_norm(cat, (4 * c,), official["layers.0.downsample.norm.weight"], official["layers.0.downsample.norm.bias"])
    expected = cat @ official["layers.0.downsample.reduction.weight"].T
    converted = convert_pretrained(official)
    merge = PatchMerging(c, 2 * c, norm_eps=1e-5)
    merge.load_state_dict({k.removeprefix("stages.0.downsample."): v for k, v in converted.items()})
    torch.testing.assert_close(merge(x.view(1, 36, c), (6, 6))[0], expected, atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic_and_drop_path_acts_in_training():
    model = tiny()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        model.eval()
        assert all(torch.equal(a, b) for a, b in zip(model(x), model(x)))
        model.train()
        assert any(not torch.equal(a, b) for a, b in zip(model(x), model(x)))
    rates = [b.attn.drop.drop_prob for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


def test_init_weights_follows_mmseg_from_scratch_scheme():
    torch.manual_seed(0)
    model = SwinTransformer(**TINY, use_abs_pos_embed=True)
    model.init_weights()
    block = model.stages[1].blocks[0]
    assert torch.count_nonzero(block.attn.w_msa.relative_position_bias_table) == 0
    assert 0.015 < block.ffn.layers[0][0].weight.std() < 0.025
    assert torch.count_nonzero(block.attn.w_msa.qkv.bias) == 0
    assert torch.equal(model.norm2.weight, torch.ones(64))
    assert 0.015 < model.absolute_pos_embed.std() < 0.025
    assert model.patch_embed.projection.weight.std() > 0.05  # the conv keeps PyTorch's default init


def test_absolute_position_embedding_is_resized_for_other_input_sizes():
    model = tiny(use_abs_pos_embed=True, pretrain_img_size=56).eval()
    assert model.absolute_pos_embed.shape == (1, 14 * 14, 16)
    with torch.no_grad():
        assert [o.shape[-1] for o in model(torch.randn(1, 3, 56, 56))] == [14, 7, 4, 2]
        assert [o.shape[-1] for o in model(torch.randn(1, 3, 64, 96))] == [24, 12, 6, 3]


def test_frozen_stages_freeze_embedding_stages_and_their_norms():
    model = tiny(frozen_stages=1).train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in [*model.stages[0].parameters(), *model.norm0.parameters()])
    assert all(p.requires_grad for p in [*model.stages[1].parameters(), *model.norm1.parameters()])
    assert not model.stages[0].training and model.stages[1].training


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 28, 28)
    grads = []
    for with_cp in (False, True):
        model = tiny(with_cp=with_cp, drop_path_rate=0.0)
        sum(o.sum() for o in model(x)).backward()
        grads.append(model.stages[1].blocks[1].attn.w_msa.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strides=(4, 2, 3, 2)), "merging strides must be 2"),
        (dict(patch_size=2), "must equal patch_size"),
        (dict(norm_cfg=dict(type="BN")), "norm_cfg type 'BN'"),
        (dict(out_indices=(0, 4)), "out of range"),
        (dict(num_heads=[1, 2]), "differ in length"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SwinTransformer(**{**TINY, **kwargs})


# --- pretrained weights -------------------------------------------------------------------------


def to_official(ours: dict) -> dict:
    """Our (mmseg) names and merging layout → the Microsoft release, written independently."""
    out = {"norm.weight": torch.ones(128), "norm.bias": torch.zeros(128), "head.weight": torch.zeros(10, 128)}
    for key, value in ours.items():
        if re.match(r"norm\d\.", key):
            continue
        if re.search(r"downsample\.(norm|reduction)\.", key):
            # ours: feature c·4 + (dy·2 + dx); official: slot·C + c with slots (0,0), (1,0), (0,1), (1,1)
            lead, features = value.shape[:-1], value.shape[-1]
            value = value.reshape(*lead, features // 4, 4)[..., [0, 2, 1, 3]].transpose(-1, -2).reshape(*lead, features)
        key = key.replace("stages.", "layers.").replace("attn.w_msa.", "attn.")
        key = key.replace("ffn.layers.0.0.", "mlp.fc1.").replace("ffn.layers.1.", "mlp.fc2.")
        out[key.replace("patch_embed.projection.", "patch_embed.proj.")] = value
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    return {"model": out}


def to_timm(ours: dict) -> dict:
    official = to_official(ours)["model"]
    moved = {re.sub(r"^layers\.(\d)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", k): v for k, v in official.items()}
    moved["head.fc.weight"] = moved.pop("head.weight")
    return moved


@pytest.mark.parametrize("fmt", ["official", "timm", "mmseg"])
def test_converter_round_trips_every_release_format(fmt):
    ours = tiny().state_dict()
    if fmt == "official":
        release = to_official(ours)
    elif fmt == "timm":
        release = to_timm(ours)
    else:
        release = {"state_dict": {f"backbone.{k}": v for k, v in ours.items()}, "decode_head.conv_seg.bias": torch.zeros(2)}
    converted = convert_pretrained(release)
    expected = ours if fmt == "mmseg" else {k: v for k, v in ours.items() if not re.match(r"norm\d\.", k)}
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_load_pretrained_resizes_tables_and_position_embedding(tmp_path):
    source = tiny(window_size=2, use_abs_pos_embed=True, pretrain_img_size=32)
    path = tmp_path / "swin_official.pth"
    torch.save(to_official(source.state_dict()), path)
    target = SwinTransformer(**{**TINY, "window_size": 4, "use_abs_pos_embed": True, "pretrain_img_size": 64})
    report = load_pretrained(target, path)
    tables = [k for k in target.state_dict() if k.endswith("relative_position_bias_table")]
    assert sorted(report.resized) == sorted(tables + ["absolute_pos_embed"])
    assert report.unexpected == [] and report.mismatched == []
    assert sorted(report.missing) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert target.absolute_pos_embed.shape == (1, 256, 16)
    assert torch.equal(target.stages[0].blocks[0].attn.w_msa.relative_position_index, relative_position_index(4))
    torch.testing.assert_close(target.stages[2].blocks[1].ffn.layers[1].weight, source.stages[2].blocks[1].ffn.layers[1].weight)


def test_resizing_a_table_to_its_own_size_is_the_identity():
    table = torch.randn(13 * 13, 3)
    torch.testing.assert_close(swin_checkpoint.resize_relative_position_table(table, 13 * 13), table)
    grid = torch.randn(1, 8 * 8, 5)
    torch.testing.assert_close(swin_checkpoint.resize_pos_embed(grid, (8, 8), (8, 8)), grid)


def test_strict_loading_names_what_is_missing():
    model = SwinTransformer(**TINY)
    with pytest.raises(ValueError, match="norm0.weight"):
        load_pretrained(model, to_official(tiny().state_dict()), strict=True)
    assert load_pretrained(model, tiny().state_dict(), strict=True).complete


def test_init_weights_loads_the_pretrained_argument(tmp_path):
    path = tmp_path / "swin.pth"
    source = tiny()
    torch.save({"state_dict": source.state_dict()}, path)
    model = SwinTransformer(**TINY, pretrained=str(path))
    report = model.init_weights()
    assert report is not None and report.complete
    assert torch.equal(model.norm3.bias, source.norm3.bias)
