"""The diffusion half of DDP as small pure functions of continuous time ``t`` in [0, 1].

Symbols (DDP / "Analog Bits" paper → code):
    λ(t) = log(α²/σ²)    ``log_snr``         the noise level, fed to the time MLP (not ``t``)
    α, σ                 ``alpha, sigma``    α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(−λ)), α² + σ² = 1
    x̂₀                   ``mask_pred``       the label map predicted at this step, re-encoded
    x_t                  ``mask_t``          the noisy label map entering the step
    ε̂                    ``pred_noise``      the noise implied by x_t and x̂₀

The arithmetic below keeps the original's order of floating-point operations, so that float32 results
agree with it to the last bit where the kernels do.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "cosine_log_snr",
    "linear_log_snr",
    "get_log_snr_fn",
    "log_snr_to_alpha_sigma",
    "sampling_time_pairs",
    "LearnedSinusoidalEmbedding",
    "TimeEmbedding",
    "LabelEncoder",
    "ddim_step",
    "ddpm_step",
    "right_pad_dims_to",
]


def cosine_log_snr(t: Tensor, ns: float = 0.0002, ds: float = 0.00025) -> Tensor:
    """log-SNR of the cosine schedule; SNR is clamped at 1e-5 so λ(1) = −18.9075 (not −∞)."""
    inv_alpha_sq_minus_one = torch.cos((t + ns) / (1 + ds) * math.pi * 0.5) ** -2 - 1
    return -torch.log(inv_alpha_sq_minus_one.clamp(min=1e-5))


def linear_log_snr(t: Tensor) -> Tensor:
    """log-SNR of the continuous 'linear beta' schedule."""
    return -torch.log(torch.special.expm1(1e-4 + 10 * (t**2)))


_SCHEDULES = {"cosine": cosine_log_snr, "linear": linear_log_snr}


def get_log_snr_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The log-SNR function of a named noise schedule (``'cosine'`` or ``'linear'``)."""
    try:
        return _SCHEDULES[name]
    except KeyError:
        raise ValueError(f"noise_schedule must be one of {sorted(_SCHEDULES)}, got {name!r}") from None


def log_snr_to_alpha_sigma(log_snr: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


def right_pad_dims_to(x: Tensor, t: Tensor) -> Tensor:
    """View ``t`` with trailing singleton dims so it broadcasts against ``x``."""
    extra = x.ndim - t.ndim
    return t if extra <= 0 else t.view(*t.shape, *((1,) * extra))


def sampling_time_pairs(
    steps: int, time_difference: float = 1.0, t_min: float = 0.0
) -> List[Tuple[float, float]]:
    """The (t_now, t_next) pairs the sampler visits, t going from 1 towards ``t_min``.

    As in the original, ``t_next`` looks ``time_difference`` steps further ahead than the next
    ``t_now`` (with the default of 1: T = 3 gives (1, 1/3), (2/3, 0), (1/3, 0)), floored at ``t_min``.
    Values are Python floats; callers turn them into float32 tensors like the original does.
    """
    if steps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {steps}")
    span = 1 - t_min
    pairs = []
    for step in range(steps):
        t_now = 1 - (step / steps) * span
        t_next = max(1 - (step + 1 + time_difference) / steps * span, t_min)
        pairs.append((t_now, t_next))
    return pairs


class LearnedSinusoidalEmbedding(nn.Module):
    """Random-Fourier features of a scalar with learned frequencies.

    Returns ``dim + 1`` features per input: the raw input followed by ``dim/2`` sines and ``dim/2``
    cosines (the raw value is kept, hence the +1).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"learned_sinusoidal_dim must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, None]
        freqs = x * self.weights[None, :] * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1)


class TimeEmbedding(nn.Module):
    """log-SNR (B,) → conditioning vector (B, time_dim): Fourier features → Linear → GELU → Linear."""

    def __init__(self, time_dim: int, sinusoidal_dim: int = 16) -> None:
        super().__init__()
        self.sinusoidal = LearnedSinusoidalEmbedding(sinusoidal_dim)
        self.fc1 = nn.Linear(sinusoidal_dim + 1, time_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(time_dim, time_dim)

    def forward(self, log_snr: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.sinusoidal(log_snr))))


class LabelEncoder(nn.Module):
    """Class ids (B, H, W) → analog label map (B, C, H, W) in [−bit_scale, bit_scale].

    One learned embedding row per class plus one for the ignore label, squashed by a sigmoid.
    """

    def __init__(self, num_classes: int, channels: int, bit_scale: float, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bit_scale = bit_scale
        self.ignore_index = ignore_index
        self.embedding = nn.Embedding(num_classes + 1, channels)

    def encode_tokens(self, labels: Tensor) -> Tensor:
        """Class ids of any shape (…) → analog codes (…, C), channels last."""
        labels = labels.masked_fill(labels == self.ignore_index, self.num_classes)
        return (torch.sigmoid(self.embedding(labels)) * 2 - 1) * self.bit_scale

    def forward(self, labels: Tensor) -> Tensor:
        return self.encode_tokens(labels).permute(0, 3, 1, 2)


def ddim_step(
    mask_t: Tensor, mask_pred: Tensor, log_snr: Tensor, log_snr_next: Tensor
) -> Tensor:
    """Deterministic DDIM update x_t → x_{t_next} given the predicted clean map x̂₀.

    1. α, σ at t and t_next from the log-SNRs (shape (B,) each, broadcast over C, H, W);
    2. ε̂ = (x_t − α·x̂₀) / σ;
    3. x_{t_next} = α_next·x̂₀ + σ_next·ε̂.
    """
    alpha, sigma = log_snr_to_alpha_sigma(right_pad_dims_to(mask_t, log_snr))
    alpha_next, sigma_next = log_snr_to_alpha_sigma(right_pad_dims_to(mask_t, log_snr_next))
    pred_noise = (mask_t - alpha * mask_pred) / sigma.clamp(min=1e-8)
    return mask_pred * alpha_next + pred_noise * sigma_next


def ddpm_step(
    mask_t: Tensor,
    mask_pred: Tensor,
    log_snr: Tensor,
    log_snr_next: Tensor,
    t_next: Tensor,
    generator: Optional[torch.Generator] = None,
    map_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Ancestral (DDPM) update: posterior mean plus fresh noise, none at the last step (t_next = 0).

    c = −expm1(λ − λ_next); mean = α_next·(x_t·(1 − c)/α + c·x̂₀); var = σ_next²·c. For token maps
    (B, h·w, C), ``map_size=(h, w)`` draws the noise in the original's (B, C, h, w) order, so a seed gives
    the same noise as there.
    """
    alpha, _ = log_snr_to_alpha_sigma(right_pad_dims_to(mask_t, log_snr))
    alpha_next, sigma_next = log_snr_to_alpha_sigma(right_pad_dims_to(mask_t, log_snr_next))
    c = -torch.special.expm1(right_pad_dims_to(mask_t, log_snr - log_snr_next))
    mean = alpha_next * (mask_t * (1 - c) / alpha + c * mask_pred)
    log_variance = torch.log((sigma_next**2 * c).clamp(min=1e-20))
    if map_size is not None:
        batch, tokens, channels = mask_t.shape
        if tokens != map_size[0] * map_size[1]:
            raise ValueError(f"ddpm_step: {tokens} tokens do not make a {map_size[0]}x{map_size[1]} map")
        noise = torch.randn((batch, channels, *map_size), generator=generator, device=mask_t.device,
                            dtype=mask_t.dtype).flatten(2).transpose(1, 2)
    else:
        noise = torch.randn(mask_t.shape, generator=generator, device=mask_t.device, dtype=mask_t.dtype)
    noise = torch.where(right_pad_dims_to(mask_t, t_next > 0), noise, torch.zeros_like(noise))
    return mean + (0.5 * log_variance).exp() * noise


def time_tensor(values: Sequence[float], device: torch.device) -> Tensor:
    """Sampler times as the original makes them: float32 tensors built from Python floats."""
    return torch.tensor(list(values), dtype=torch.float32, device=device)
