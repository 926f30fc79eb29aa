"""The diffusion maths against values computed by the original functions (schedule_golden.json)."""

from __future__ import annotations

import json

import pytest
import torch

from ddpseg.models.diffusion import (
    cosine_log_snr,
    ddim_step,
    get_log_snr_fn,
    linear_log_snr,
    log_snr_to_alpha_sigma,
    sampling_time_pairs,
    time_tensor,
)

from ..conftest import FIXTURES

GOLDEN = json.loads((FIXTURES / "schedule_golden.json").read_text())
# The golden set was made on an AVX2 CPU. PyTorch's vectorised sigmoid rounds differently (by an ulp) on other
# instruction sets, e.g. AVX-512, as the original's would there too: exact on AVX2, within one ulp elsewhere.
GOLDEN_CPU = "AVX2"


def assert_same_float32(got: torch.Tensor, expected: list) -> None:
    if torch.backends.cpu.get_cpu_capability() == GOLDEN_CPU:
        assert got.tolist() == expected
    else:
        want = torch.tensor(expected, dtype=torch.float32)
        ulp = torch.nextafter(want.abs(), torch.tensor(float("inf"))) - want.abs()
        assert ((got - want).abs() <= ulp).all(), f"{got.tolist()} vs {expected}: more than one ulp apart"


@pytest.mark.parametrize("name,fn", [("alpha_cosine_log_snr", cosine_log_snr), ("beta_linear_log_snr", linear_log_snr)])
def test_log_snr_and_alpha_sigma_match_the_original_in_float32(name, fn):
    t = torch.linspace(0, 1, 11)
    ref = GOLDEN[name]
    log_snr = fn(t)
    alpha, sigma = log_snr_to_alpha_sigma(log_snr)
    assert log_snr.tolist() == ref["log_snr"]
    assert_same_float32(alpha, ref["alpha"])
    assert_same_float32(sigma, ref["sigma"])


@pytest.mark.parametrize("name,fn", [("alpha_cosine_log_snr", cosine_log_snr), ("beta_linear_log_snr", linear_log_snr)])
def test_log_snr_matches_the_original_in_float64(name, fn):
    t = torch.tensor(GOLDEN["t"], dtype=torch.float64)  # the float32 grid, widened
    torch.testing.assert_close(fn(t), torch.tensor(GOLDEN[name]["float64"]["log_snr"], dtype=torch.float64), rtol=0, atol=1e-12)


def test_cosine_schedule_is_clamped_at_both_ends():
    ends = cosine_log_snr(torch.tensor([0.0, 1.0]))
    assert ends.tolist() == pytest.approx([11.5129, -18.9075], abs=1e-4)
    _, sigma0 = log_snr_to_alpha_sigma(ends[:1])
    assert sigma0.item() == pytest.approx(0.00316, abs=1e-5)


@pytest.mark.parametrize("steps", [1, 3, 5, 10])
def test_sampling_time_pairs_and_their_noise_levels_match_the_original(steps):
    ref = GOLDEN["sampling_timesteps"][str(steps)]
    pairs = sampling_time_pairs(steps, time_difference=1, t_min=0.0)
    assert len(pairs) == len(ref)
    for (t_now, t_next), r in zip(pairs, ref):
        assert t_now == pytest.approx(r["t_now_python_double"], abs=0)
        assert t_next == pytest.approx(r["t_next_python_double"], abs=0)
        times = time_tensor([t_now, t_next], torch.device("cpu"))
        assert times.tolist() == [r["t_now"], r["t_next"]]
        log_snr = cosine_log_snr(times)
        assert log_snr.tolist() == [r["cosine_log_snr_now"], r["cosine_log_snr_next"]]
        alpha, sigma = log_snr_to_alpha_sigma(log_snr)
        assert_same_float32(alpha, [r["alpha_now"], r["alpha_next"]])
        assert_same_float32(sigma, [r["sigma_now"], r["sigma_next"]])


def test_unknown_schedule_and_bad_step_count_are_clear_errors():
    with pytest.raises(ValueError, match="noise_schedule"):
        get_log_snr_fn("sigmoid")
    with pytest.raises(ValueError, match="steps"):
        sampling_time_pairs(0)


def test_ddim_step_recovers_the_clean_map_at_t_next_zero():
    clean = torch.rand(2, 4, 3, 3) * 0.02 - 0.01
    noise = torch.randn_like(clean)
    log_snr = cosine_log_snr(torch.tensor([0.5]))
    alpha, sigma = log_snr_to_alpha_sigma(log_snr)
    noisy = alpha * clean + sigma * noise
    out = ddim_step(noisy, clean, log_snr, cosine_log_snr(torch.tensor([0.0])))
    alpha0, sigma0 = log_snr_to_alpha_sigma(cosine_log_snr(torch.tensor([0.0])))
    torch.testing.assert_close(out, alpha0 * clean + sigma0 * noise, rtol=1e-5, atol=1e-6)


def test_ddpm_step_on_tokens_draws_the_noise_of_the_map_layout():
    """The original draws randn_like(mask_t) on (B, C, h, w) maps; the token-layout sampler must draw the same."""
    from ddpseg.models.diffusion import ddpm_step

    gen = torch.Generator().manual_seed(0)
    maps, pred = torch.randn(2, 5, 3, 4, generator=gen), torch.randn(2, 5, 3, 4, generator=gen)
    log_snr, log_snr_next, t_next = torch.tensor([2.0]), torch.tensor([4.0]), torch.tensor([0.5])
    want = ddpm_step(maps, pred, log_snr, log_snr_next, t_next, torch.Generator().manual_seed(7))
    tokens = lambda m: m.flatten(2).transpose(1, 2).contiguous()  # noqa: E731
    got = ddpm_step(tokens(maps), tokens(pred), log_snr, log_snr_next, t_next, torch.Generator().manual_seed(7),
                    map_size=(3, 4))
    torch.testing.assert_close(got, tokens(want), rtol=0, atol=0)
