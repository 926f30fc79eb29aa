"""The fused training layer (models/train_decoder.py) against the module path it replaces under autograd."""

from __future__ import annotations

import copy

import pytest
import torch

import ddpseg.models.train_decoder as train_decoder
from ddpseg import kernels, native, triton_msda
from ddpseg.models.heads import DeformableHeadWithTime
from ddpseg.models.train_decoder import can_fuse_layer

from ..native_kernel import require_native_kernel
from ..triton_kernel import triton_device


def _head(dtype: torch.dtype, **kwargs) -> DeformableHeadWithTime:
    torch.manual_seed(0)
    args = dict(in_channels=32, num_classes=5, time_dims=16, num_layers=2, num_heads=4, num_points=3,
                ffn_channels=64, pos_num_feats=16)
    args.update(kwargs)
    head = DeformableHeadWithTime(**args).to(dtype)
    with torch.no_grad():  # away from the zero/ring initialisation: offsets reach past the borders
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return head


def _run(head, x, time_emb, height, width, fused: bool):
    head.fused_training = fused
    head.zero_grad()
    x.grad = time_emb.grad = None
    out = head.forward_tokens(x, height, width, head.time_conditioning(time_emb))
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), time_emb.grad.clone(), grads


@pytest.mark.parametrize("time_batch", [1, 2])
@pytest.mark.parametrize("gather", ["native", "sparse", "dense"])
def test_gradients_equal_module_path_float64(monkeypatch, time_batch, gather):
    monkeypatch.setattr(train_decoder, "TOKENS_PER_CHUNK", 40)  # several chunks, the last one partial
    calls = []
    if gather == "native":
        require_native_kernel()
        backward = native.msda_backward
        monkeypatch.setattr(native, "msda_backward", lambda *a, **k: calls.append(1) or backward(*a, **k))
    else:
        monkeypatch.setenv("DDPSEG_NATIVE", "0")
        gather_backward = train_decoder._gather_backward

        def counted(*args):
            calls.append(1)
            return gather_backward(*args, sparse=gather == "sparse")

        monkeypatch.setattr(train_decoder, "_gather_backward", counted)
    head = _head(torch.float64)
    height, width = 7, 19
    x = torch.randn(2, height * width, 32, dtype=torch.float64, requires_grad=True)
    time_emb = torch.randn(time_batch, 16, dtype=torch.float64, requires_grad=True)
    ref = _run(head, x, time_emb, height, width, fused=False)
    got = _run(head, x, time_emb, height, width, fused=True)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-10, atol=1e-10)
    assert set(got[3]) == set(ref[3])
    for name in ref[3]:
        torch.testing.assert_close(got[3][name], ref[3][name], rtol=1e-10, atol=1e-10, msg=name)
    assert len(calls) == 2 * 2  # the chosen gather backward ran: 2 layers × 2 images


def test_gradients_with_the_triton_kernel_match_module_path_float32(monkeypatch):
    """Forward within 1e-5 of the module path. Gradients: float32 sums over all tokens (and, on a GPU, atomic
    adds in no fixed order) round differently along the two paths, by up to ~1e-3 on values of ~100 here, so
    each gradient is held to the exact one (the module path in float64): the Triton path may be off by at
    most twice the float32 module path's own error, plus 4 float32 ulps of the tensor's largest value."""
    device = triton_device()
    monkeypatch.setattr(train_decoder, "TOKENS_PER_CHUNK", 40)
    monkeypatch.setattr(kernels, "gather_kernel", lambda *tensors: triton_msda)  # also on the interpreter's CPU
    calls = []
    backward = triton_msda.msda_backward
    monkeypatch.setattr(triton_msda, "msda_backward", lambda *a, **k: calls.append(1) or backward(*a, **k))
    head = _head(torch.float32)
    height, width = 7, 19
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, height * width, 32, generator=gen)
    time_emb = torch.randn(2, 16, generator=gen)
    exact = _run(copy.deepcopy(head).double(), x.double().requires_grad_(), time_emb.double().requires_grad_(),
                 height, width, fused=False)
    head = head.to(device)
    x, time_emb = x.to(device).requires_grad_(), time_emb.to(device).requires_grad_()
    ref = [_to_cpu(r) for r in _run(head, x, time_emb, height, width, fused=False)]
    got = [_to_cpu(r) for r in _run(head, x, time_emb, height, width, fused=True)]
    assert len(calls) == 2 * 2  # the Triton backward ran: 2 layers × 2 images
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    assert set(got[3]) == set(ref[3]) == set(exact[3])
    pairs = [("x", got[1], ref[1], exact[1]), ("time_emb", got[2], ref[2], exact[2])]
    pairs += [(name, got[3][name], ref[3][name], exact[3][name]) for name in exact[3]]
    for name, ours, module, truth in pairs:
        ours_error = (ours.double() - truth).abs().max().item()
        module_error = (module.double() - truth).abs().max().item()
        bound = 2 * module_error + 4 * 2.0**-23 * truth.abs().max().item()
        assert ours_error <= bound, f"{name}: Triton path off by {ours_error:.3g}, module path by {module_error:.3g}"


def _to_cpu(result):
    return {k: v.cpu() for k, v in result.items()} if isinstance(result, dict) else result.cpu()


def test_float32_forward_matches_module_path():
    head = _head(torch.float32)
    x = torch.randn(1, 16 * 24, 32, requires_grad=True)
    time_emb = torch.randn(1, 16)
    film = head.time_conditioning(time_emb)
    head.fused_training = False
    ref = head.forward_tokens(x, 16, 24, film)
    head.fused_training = True
    got = head.forward_tokens(x, 16, 24, film)
    assert got.grad_fn is not None and "Fused" in type(got.grad_fn).__name__
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _saved_bytes(head, x, film, height, width) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        head.forward_tokens(x, height, width, film)
    return sum(storages.values())


def test_saves_only_its_listed_tensors_and_far_less_than_the_module_path():
    h, w, c, ffn, heads, points = 32, 64, 64, 256, 8, 4
    head = _head(torch.float32, in_channels=c, pos_num_feats=32, ffn_channels=ffn, num_heads=heads, num_points=points)
    x = torch.randn(1, h * w, c, requires_grad=True)
    film = head.time_conditioning(torch.randn(1, 16))
    head.fused_training = False
    module = _saved_bytes(head, x, film, h, w)
    head.fused_training = True
    fused = _saved_bytes(head, x, film, h, w)
    tokens = h * w
    # per layer: bordered value table, offsets + logits, input/core/r1/f, FFN pre-activation, LayerNorm stats,
    # and with the native kernel the attention weights
    per_layer = (h + 2) * (w + 2) * c + tokens * heads * points * 3 + 4 * tokens * c + tokens * ffn + 4 * tokens
    if native.usable(x):
        per_layer += tokens * heads * points
    small = sum(p.numel() for p in head.parameters()) + 2 * tokens * c  # weights, positional encodings, ...
    assert 4 * per_layer * len(head.layers) <= fused <= 4 * (per_layer * len(head.layers) + small), fused
    assert fused < 0.5 * module, (fused, module)


def test_falls_back_where_it_does_not_apply():
    head = _head(torch.float32, attn_drop=0.1)
    layer = head.layers[0]
    x = torch.randn(1, 12, 32)
    assert not can_fuse_layer(layer.train(), x)  # active dropout
    assert can_fuse_layer(layer.eval(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not can_fuse_layer(layer, x)
    assert not can_fuse_layer(_head(torch.float32, act_cfg=dict(type="ReLU")).layers[0], x)
    # no autograd: the fused function is not used (inference has its own chunked path)
    head.eval()
    with torch.no_grad():
        out = head.forward_tokens(torch.randn(1, 12, 32), 3, 4, head.time_conditioning(torch.randn(1, 16)))
    assert out.grad_fn is None


@pytest.mark.parametrize("sparse", [True, False])
def test_gather_backward_matches_dense_reference(sparse):
    from ddpseg.models.train_decoder import _gather_backward

    torch.manual_seed(1)
    bags, k, rows, dim = 50, 16, 37, 8  # few rows: many entries share a row
    table = torch.randn(rows, dim, dtype=torch.float64)
    index = torch.randint(0, rows, (bags, k))
    weight = torch.rand(bags, k, dtype=torch.float64)
    grad = torch.randn(bags, dim, dtype=torch.float64)
    g_weight, g_table = _gather_backward(table, index, weight.view(bags, k), grad, sparse=sparse)
    torch.testing.assert_close(g_weight, (table[index] * grad[:, None]).sum(-1))
    expected = torch.zeros_like(table).index_add_(0, index.reshape(-1), (weight[..., None] * grad[:, None]).reshape(-1, dim))
    torch.testing.assert_close(g_table, expected)


def test_mini_ddp_training_gradients_match_plain_autograd(mini_model_cfg):
    from ddpseg.models.backbones.layers import DepthwiseConv2d
    from ddpseg.models.build import build_model

    torch.manual_seed(0)
    model = build_model(mini_model_cfg).double().train()
    img = torch.randn(1, 3, 64, 128, dtype=torch.float64)
    gt = torch.randint(0, model.num_classes, (1, 1, 64, 128))
    gt[0, 0, :4] = 255
    times = torch.tensor([0.3], dtype=torch.float64)
    noise = torch.randn(1, model.decode_head.in_channels, 16, 32, dtype=torch.float64)

    def grads(fused: bool):
        model.decode_head.fused_training = fused
        DepthwiseConv2d.fast_backward = fused
        model.zero_grad()
        torch.manual_seed(1)  # the auxiliary head's dropout draws the same mask both times
        try:
            losses = model.forward_train(img, gt, times=times, noise=noise)
        finally:
            DepthwiseConv2d.fast_backward = True
        sum(v for k, v in losses.items() if "loss" in k).backward()
        return {k: v.detach() for k, v in losses.items()}, {n: p.grad.clone() for n, p in model.named_parameters()}

    (loss_fused, fused), (loss_plain, plain) = grads(True), grads(False)
    for name in loss_plain:
        torch.testing.assert_close(loss_fused[name], loss_plain[name], rtol=1e-10, atol=1e-10)
    assert set(fused) == set(plain)
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-8, atol=1e-10, msg=name)


def test_config_key_switches_the_fused_path_off(mini_model_cfg):
    import copy

    from ddpseg.models.build import ModelConfigError, build_model

    assert build_model(mini_model_cfg).decode_head.fused_training is True
    cfg = copy.deepcopy(mini_model_cfg)
    cfg["decode_head"]["fused_training"] = False
    assert build_model(cfg).decode_head.fused_training is False
    cfg["decode_head"]["fused_training"] = "no"
    with pytest.raises(ModelConfigError, match="fused_training"):
        build_model(cfg)
