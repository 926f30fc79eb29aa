"""The native deformable-attention kernel (csrc/msda_cpu.cpp) against the portable PyTorch path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpseg import native
from ddpseg.models.ms_deform_attn import single_level_corners, single_level_corners_with_backward
from ddpseg.models.train_decoder import _gather_backward

from ..native_kernel import require_native_kernel
from .decoder_inputs import gather_problem as _problem
from .decoder_inputs import perturbed_model_and_inputs
from .decoder_inputs import softmax_attention as _attention


@pytest.mark.parametrize("dim", [32, 8, 5])
def test_forward_is_bit_equal_to_corners_and_embedding_bag(dim):
    lib = require_native_kernel()
    samp, ref, table, head_major, (heads, points, h, w) = _problem(torch.float32, dim=dim)
    plane = (h + 2) * (w + 2) * heads
    for b in range(2):  # image 1 sits at a row offset of the batched table
        index, weight = single_level_corners(samp, ref, heads, points, h, w, b * plane)
        expected = F.embedding_bag(
            index, table.view(-1, dim), per_sample_weights=weight.view(-1, points * 4), mode="sum"
        ).view(samp.shape[0], -1)
        got = native.msda_forward(
            samp, _attention(samp, heads, points), ref, head_major.view(-1, dim), heads, points, h, w, b * plane
        )
        if lib.ddpseg_msda_has_fma():  # the same fused multiply-adds in the same order
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_float64_forward_and_backward_match_the_portable_path():
    require_native_kernel()
    samp, ref, table, head_major, (heads, points, h, w) = _problem(torch.float64)
    dim = table.shape[-1]
    flat, hm = table[0].reshape(-1, dim), head_major[0].reshape(-1, dim)
    grad = torch.randn(samp.shape[0], heads * dim, dtype=torch.float64)
    index, weight, corners_backward = single_level_corners_with_backward(samp, ref, heads, points, h, w)
    expected = F.embedding_bag(index, flat, per_sample_weights=weight.view(-1, points * 4), mode="sum")
    g_weight, g_rows = _gather_backward(flat, index, weight, grad)
    expected_g_samp = corners_backward(g_weight)

    attention = _attention(samp, heads, points)
    got = native.msda_forward(samp, attention, ref, hm, heads, points, h, w)
    g_table, g_samp = native.msda_backward(samp, attention, ref, hm, grad, heads, points, h, w)
    torch.testing.assert_close(got, expected.view_as(got), rtol=1e-13, atol=1e-13)
    g_table = g_table.view(heads, h + 2, w + 2, dim).permute(1, 2, 0, 3).reshape(-1, dim)
    # border rows collect gradient of clamped corners in both; only the interior is used, compare all
    torch.testing.assert_close(g_table, g_rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_samp, expected_g_samp, rtol=1e-12, atol=1e-12)


def test_backward_is_the_gradient_of_the_forward_gradcheck():
    require_native_kernel()
    samp, ref, _, head_major, (heads, points, h, w) = _problem(torch.float64, height=4, width=5, heads=2, points=2, dim=3)
    table = head_major[0].reshape(-1, 3)

    class Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s, t):
            a = _attention(s, heads, points)
            ctx.save_for_backward(s, a, t)
            return native.msda_forward(s, a, ref, t, heads, points, h, w)

        @staticmethod
        def backward(ctx, g):
            s, a, t = ctx.saved_tensors
            g_table, g_samp = native.msda_backward(s, a, ref, t, g.contiguous(), heads, points, h, w)
            return g_samp, g_table

    # small offsets keep the samples away from pixel boundaries, where the bilinear weights kink
    s = (samp * 0.01).requires_grad_()
    t = table.clone().requires_grad_()
    assert torch.autograd.gradcheck(Gather.apply, (s, t), eps=1e-7, atol=1e-6)


def test_thread_count_does_not_change_any_result():
    require_native_kernel()
    samp, ref, _, head_major, (heads, points, h, w) = _problem(torch.float32, height=16, width=24)
    table = head_major[0].reshape(-1, 32)
    attention = _attention(samp, heads, points)
    grad = torch.randn(samp.shape[0], heads * 32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(
                (
                    native.msda_forward(samp, attention, ref, table, heads, points, h, w),
                    *native.msda_backward(samp, attention, ref, table, grad, heads, points, h, w),
                )
            )
    finally:
        torch.set_num_threads(threads)
    (out1, gt1, gs1), (out3, gt3, gs3) = results
    # threads split the heads, so no sum is split between threads: equal bit for bit
    assert torch.equal(out1, out3)
    assert torch.equal(gs1, gs3)
    assert torch.equal(gt1, gt3)


def test_chunked_inference_decoder_is_bit_equal_with_and_without_the_kernel(mini_model_cfg, monkeypatch):
    lib = require_native_kernel()
    model, x, noise = perturbed_model_and_inputs(mini_model_cfg, monkeypatch)
    calls = []
    forward = native.msda_forward
    monkeypatch.setattr(native, "msda_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    got = model.sample_features(x, steps=3, noise=noise)
    assert calls, "the native kernel did not run"
    monkeypatch.setenv("DDPSEG_NATIVE", "0")
    expected = model.sample_features(x, steps=3, noise=noise)
    if lib.ddpseg_msda_has_fma():
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DDPSEG_NATIVE", "0")
    assert native.msda_library() is None
    assert not native.usable(torch.zeros(2))


def test_no_compiler_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        assert native.msda_library() is None
    assert native.msda_library() is None  # decided once: no second warning, no retry
    assert not native.usable(torch.zeros(2))


def test_a_failing_build_names_the_source_and_keeps_nothing(monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(native, "_SOURCES", (bad,))
    monkeypatch.setenv("DDPSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_library", None)
    with pytest.warns(RuntimeWarning, match="broken.cpp"):
        assert native.msda_library() is None
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_builds_into_the_cache_dir_and_reuses_it(monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("DDPSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_library", None)
    assert native.msda_library() is not None
    built = list(tmp_path.rglob("libddpseg_msda.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert native._build(native._compiler()) == built[0]  # same source, compiler and CPU: not rebuilt
    assert built[0].stat().st_mtime_ns == mtime


def test_rejects_non_contiguous_inputs_naming_them():
    require_native_kernel()
    samp, ref, _, head_major, (heads, points, h, w) = _problem(torch.float32)
    with pytest.raises(ValueError, match="samp must be contiguous"):
        native.msda_forward(samp.t().contiguous().t(), _attention(samp, heads, points), ref, head_major[0].reshape(-1, 32), heads, points, h, w)


def test_rejects_sizes_the_kernel_would_read_past_naming_them():
    require_native_kernel()
    samp, ref, _, head_major, (heads, points, h, w) = _problem(torch.float32)
    table = head_major[0].reshape(-1, 32)
    attention = _attention(samp, heads, points)
    with pytest.raises(ValueError, match="table must be .*rows ≥ offset"):
        native.msda_forward(samp, attention, ref, table, heads, points, h, w, table_offset=table.shape[0])
    with pytest.raises(ValueError, match="table must be"):
        native.msda_forward(samp, attention, ref, table, heads, points, h + 1, w)
    with pytest.raises(ValueError, match="attention must be"):
        native.msda_forward(samp, attention[:, :-1], ref, table, heads, points, h, w)
    with pytest.raises(ValueError, match="ref must be"):
        native.msda_forward(samp, attention, ref[1:], table, heads, points, h, w)
    with pytest.raises(ValueError, match="grad must be"):
        native.msda_backward(samp, attention, ref, table, torch.zeros(3, 3), heads, points, h, w)
    with pytest.raises(ValueError, match="must be a CPU torch.float32"):
        native.msda_forward(samp, attention.double(), ref, table, heads, points, h, w)


# ---- the exact replay of torch's serial normal draw (csrc/normal_cpu.cpp) ----

_NOISE_LAYOUTS = [
    ((1, 64, 32, 48), "channels_last"),  # the training noise's layout, even count
    ((2, 3, 7, 5), "channels_last"),  # odd count: the pair's second value stays cached in the generator
    ((1, 3, 1001, 351), "channels_last"),  # odd and > 2 blocks of the kernel's uniforms
    ((4, 6, 5), "transposed"),  # another dense permutation
]


def _layout(shape, kind):
    if kind == "channels_last":
        return torch.empty(shape).to(memory_format=torch.channels_last)
    return torch.empty(shape[::-1]).permute(2, 1, 0)


@pytest.mark.parametrize("shape,kind", _NOISE_LAYOUTS)
@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_randn_like_is_torchs_draw_bit_for_bit_and_leaves_the_generator_where_torch_does(shape, kind, cached, threads):
    require_native_kernel()
    t = _layout(shape, kind)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(11)
        if cached:
            torch.randn(3, 1)  # serial path, odd count: a value waits in the generator
        start = torch.get_rng_state()
        expected = torch.randn_like(t)
        after = torch.get_rng_state()
        torch.set_rng_state(start)
        got = native.randn_like(t)
        assert torch.equal(got, expected) and got.stride() == expected.stride()
        assert torch.equal(torch.get_rng_state(), after)
        assert torch.equal(torch.randn(5, 1), (torch.set_rng_state(after), torch.randn(5, 1))[1])
    finally:
        torch.set_num_threads(previous)


def test_randn_like_with_a_generator_and_on_contiguous_tensors():
    require_native_kernel()
    t = _layout((1, 8, 9, 10), "channels_last")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(native.randn_like(t, generator=g1), torch.empty_like(t).normal_(generator=g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    c = torch.empty(3, 40)  # contiguous: torch's own (vectorised) path, unchanged
    torch.manual_seed(1)
    expected = torch.randn_like(c)
    torch.manual_seed(1)
    assert torch.equal(native.randn_like(c), expected)


def test_randn_like_falls_back_to_torch_when_its_check_fails(monkeypatch):
    require_native_kernel()
    monkeypatch.setattr(native, "_normal_checked", None)
    monkeypatch.setattr(native, "_normal_matches_torch", lambda lib: False)
    t = _layout((1, 4, 3, 5), "channels_last")
    torch.manual_seed(2)
    expected = torch.randn_like(t)
    torch.manual_seed(2)
    with pytest.warns(RuntimeWarning, match="native normal draw disabled"):
        got = native.randn_like(t)
    assert torch.equal(got, expected)
    assert native._normal_checked is False


def test_training_step_draws_the_same_noise_with_and_without_the_replay(mini_model_cfg, monkeypatch):
    require_native_kernel()
    from ddpseg.models.build import build_model

    model = build_model(mini_model_cfg).train()
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 64, 96, generator=gen)
    gt = torch.randint(0, 19, (1, 1, 64, 96), generator=gen)
    assert native._normal_check(native.msda_library())  # done before counting: the check replays too
    calls = []
    replay = native._replay_normal
    monkeypatch.setattr(native, "_replay_normal", lambda *args: calls.append(1) or replay(*args))
    torch.manual_seed(7)
    ours = model.forward_train(img, gt)
    assert calls  # the training noise (channels-last) went through the replay
    monkeypatch.setattr(native, "randn_like", lambda t, generator=None: torch.randn_like(t))
    torch.manual_seed(7)
    theirs = model.forward_train(img, gt)
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
