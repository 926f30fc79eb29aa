"""DDP and SelfAlignedDDP: a segmentor that denoises a random map into a label map, guided by image features.

Flow (see ``GUIDE.md``):

    image → backbone → neck → x (B, C, H/4, W/4)                      once per image
    m_t ~ N(0, I); for (t, t_next) in the schedule:
        f = transform(cat[x, m_t])                                     1×1 conv, 2C → C
        logits = decoder(f, time_mlp(λ(t)))
        m̂ = encode(argmax logits); m_t = DDIM(m_t, m̂, λ(t), λ(t_next))
    logits (last step, or the mean of every step's softmax with ``accumulation``) → resized to the image
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import native
from .diffusion import (
    LabelEncoder,
    TimeEmbedding,
    ddim_step,
    ddpm_step,
    get_log_snr_fn,
    log_snr_to_alpha_sigma,
    right_pad_dims_to,
    sampling_time_pairs,
    time_tensor,
)
from .fast_decoder import can_decode_chunked, decode_tokens_chunked
from .heads import DeformableHeadWithTime, FCNHead, tokens_to_map
from .necks import DDPNeck

__all__ = ["DDP", "SelfAlignedDDP", "SamplerTrace", "check_steps"]


def check_steps(steps: Any) -> int:
    """The number of sampling steps as an int >= 1; ``ValueError`` naming ``steps`` for anything else (``2.5``
    would otherwise be truncated to 2 steps without a word)."""
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 1:
        return int(steps)
    raise ValueError(f"steps must be an integer >= 1 (the number of diffusion steps), got {steps!r}")


class SamplerTrace:
    """What the sampler saw at each step (for uncertainty maps and debugging): logits and argmax per step."""

    def __init__(self) -> None:
        self.logits: List[Tensor] = []
        self.labels: List[Tensor] = []


class DDP(nn.Module):
    """The DDP segmentor.

    Args:
        backbone: returns 4 feature maps at strides 4, 8, 16, 32.
        neck: fuses them into one stride-4 map with ``decode_head.in_channels`` channels.
        decode_head: the time-conditioned decoder.
        auxiliary_head: optional FCN head on the neck output, used for training only.
        num_classes: segmentation classes (the label embedding has one more row for "ignore").
        bit_scale: the analog label map lives in [−bit_scale, bit_scale].
        timesteps: default number of sampling steps.
        randsteps: samples drawn per image and averaged.
        time_difference: how far ahead ``t_next`` looks (in steps).
        learned_sinusoidal_dim: Fourier features of the time embedding.
        sample_range: training times are drawn from U(sample_range); sampling stops at sample_range[0].
        noise_schedule: ``'cosine'`` or ``'linear'`` log-SNR.
        diffusion: ``'ddim'`` (deterministic after the first draw) or ``'ddpm'``.
        accumulation: return the mean over steps of the softmax instead of the last step's logits.
        align_corners: for the final resize to the image size.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: DDPNeck,
        decode_head: DeformableHeadWithTime,
        auxiliary_head: Optional[FCNHead] = None,
        num_classes: int,
        bit_scale: float = 0.1,
        timesteps: int = 1,
        randsteps: int = 1,
        time_difference: float = 1,
        learned_sinusoidal_dim: int = 16,
        sample_range: Tuple[float, float] = (0.0, 0.999),
        noise_schedule: str = "cosine",
        diffusion: str = "ddim",
        accumulation: bool = False,
        align_corners: bool = False,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if diffusion not in ("ddim", "ddpm"):
            raise ValueError(f"diffusion must be 'ddim' or 'ddpm', got {diffusion!r}")
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.num_classes = num_classes
        self.timesteps = timesteps
        self.randsteps = randsteps
        self.time_difference = time_difference
        self.sample_range = tuple(sample_range)
        self.noise_schedule = noise_schedule
        self.log_snr = get_log_snr_fn(noise_schedule)
        self.diffusion = diffusion
        self.accumulation = accumulation
        self.align_corners = align_corners
        self.chunked_decoder = True  # the cache-friendly inference path (fast_decoder.py); False: module path
        self.channels_last = False  # feed the encoder NHWC images (ddpseg.runtime.speed_up_encoder)
        channels = decode_head.in_channels
        self.label_encoder = LabelEncoder(num_classes, channels, bit_scale, ignore_index)
        self.transform = nn.Conv2d(channels * 2, channels, 1)
        self.time_mlp = TimeEmbedding(channels * 4, learned_sinusoidal_dim)

    @property
    def bit_scale(self) -> float:
        return self.label_encoder.bit_scale

    # ------------------------------------------------------------------ features
    def extract_feat(self, img: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) → fused features (B, C, H/4, W/4)."""
        if self.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(img))

    def _denoise_logits(self, x: Tensor, mask_t: Tensor, log_snr: Tensor) -> Tensor:
        """One decoder pass: logits at 1/4 size for the noisy map ``mask_t`` at noise level ``log_snr``."""
        feat = self.transform(torch.cat([x, mask_t], dim=1))
        return self.decode_head(feat, self.time_mlp(log_snr))

    # ------------------------------------------------------------------ training
    def forward_train(
        self, img: Tensor, gt_semantic_seg: Tensor, *, times: Optional[Tensor] = None, noise: Optional[Tensor] = None
    ) -> Dict[str, Tensor]:
        """Losses for a batch: the encoded ground truth, noised at t ~ U(sample_range), denoised once.

        Args:
            img: normalised images (B, 3, H, W).
            gt_semantic_seg: labels (B, 1, H, W), 255 = ignore.
            times, noise: optional fixed draws (B,) and (B, C, H/4, W/4); drawn from torch's RNG otherwise
                (in this order, as the original does).

        Returns:
            ``decode.loss_ce``, ``decode.acc_seg`` and, with an auxiliary head, ``aux.loss_ce``, ``aux.acc_seg``.
        """
        x = self.extract_feat(img)
        gt_down = F.interpolate(gt_semantic_seg.float(), size=x.shape[2:], mode="nearest").long().squeeze(1)
        clean = self.label_encoder(gt_down)
        if times is None:
            times = self.draw_times(x.shape[0], x.device)
        if noise is None:  # torch's draw, bit for bit (the native replay of its serial path where it applies)
            noise = native.randn_like(clean)
        return self._denoising_losses(x, clean, times, noise, gt_semantic_seg)

    def draw_times(self, batch: int, device: torch.device) -> Tensor:
        return torch.zeros((batch,), device=device).float().uniform_(*self.sample_range)

    def _denoising_losses(
        self, x: Tensor, clean: Tensor, times: Tensor, noise: Tensor, gt_semantic_seg: Tensor
    ) -> Dict[str, Tensor]:
        log_snr = self.log_snr(times)
        alpha, sigma = log_snr_to_alpha_sigma(right_pad_dims_to(clean, log_snr))
        noised = alpha * clean + sigma * noise
        logits = self._denoise_logits(x, noised, log_snr)
        losses = {f"decode.{k}": v for k, v in self.decode_head.loss(logits, gt_semantic_seg).items()}
        if self.auxiliary_head is not None:
            aux = self.auxiliary_head.loss(self.auxiliary_head(x), gt_semantic_seg)
            losses.update({f"aux.{k}": v for k, v in aux.items()})
        return losses

    # ------------------------------------------------------------------ sampling
    def sampling_schedule(self, steps: int) -> List[Tuple[float, float]]:
        return sampling_time_pairs(steps, self.time_difference, self.sample_range[0])

    @torch.no_grad()
    def sample_features(
        self,
        x: Tensor,
        steps: Optional[int] = None,
        noise: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        trace: Optional[SamplerTrace] = None,
    ) -> Tensor:
        """Run the sampler on precomputed features x (B, C, h, w) → logits or probabilities (B, K, h, w).

        ``noise`` is the initial map (randsteps·B, C, h, w), repeat index outermost as in the original;
        without it, it is drawn from ``generator`` (or torch's global RNG).

        Work that is the same at every step is done once: the image half of ``transform`` (the 1×1 conv
        over cat[x, m] is W_x·x + b + W_m·m), positional encodings and reference points (cached by the
        head). The loop runs on token maps (B, h·w, C), the layout the decoder and the label embedding
        use, so no step transposes a full map.
        """
        steps = self.timesteps if steps is None else check_steps(steps)
        batch, channels, h, w = x.shape
        reps = self.randsteps
        shape = (reps * batch, channels, h, w)
        # the label map in float32 at least, also for bf16/fp16 features under autocast (the original draws
        # float32 noise whatever the model's precision)
        map_dtype = torch.promote_types(x.dtype, torch.float32)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=x.device, dtype=map_dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} (randsteps·B, C, H/4, W/4), got {tuple(noise.shape)}")
        weight = self.transform.weight.view(channels, 2 * channels)
        w_img, w_mask = weight[:, :channels], weight[:, channels:]
        img_part = F.linear(x.flatten(2).transpose(1, 2), w_img, self.transform.bias)  # (B, Q, C), once
        img_part = img_part.repeat(reps, 1, 1) if reps > 1 else img_part  # same for every random draw
        mask_t = noise.to(device=x.device, dtype=map_dtype).flatten(2).transpose(1, 2).contiguous()
        probs: List[Tensor] = []
        logits = mask_t.new_empty(0)
        times = time_tensor([t for pair in self.sampling_schedule(steps) for t in pair], x.device).view(-1, 2)
        log_snrs = self.log_snr(times)
        for i in range(steps):
            log_snr, log_snr_next = log_snrs[i, :1], log_snrs[i, 1:]
            feat = img_part + torch.matmul(mask_t, w_mask.t())
            film = self.decode_head.time_conditioning(self.time_mlp(log_snr))
            logits = self._decode_tokens(feat, h, w, film)  # (rB, Q, K)
            labels = logits.argmax(dim=-1)
            if self.diffusion == "ddim":
                if i + 1 < steps:  # the map after the last step is never used
                    mask_t = ddim_step(mask_t, self.label_encoder.encode_tokens(labels), log_snr, log_snr_next)
            else:  # DDPM always draws its noise, so the RNG advances as in the original
                mask_pred = self.label_encoder.encode_tokens(labels)
                mask_t = ddpm_step(mask_t, mask_pred, log_snr, log_snr_next, times[i, 1:], generator, map_size=(h, w))
            if self.accumulation:
                probs.append(logits.softmax(-1))
            if trace is not None:
                trace.logits.append(tokens_to_map(logits, h, w))
                trace.labels.append(labels.view(-1, h, w))
        out = torch.stack(probs) if self.accumulation else logits[None]
        out = out.reshape(-1, batch, h * w, out.shape[-1]).mean(0)
        # contiguous NCHW like the original's conv output: the final bilinear resize then rounds as there (its
        # channels-last kernel differs in the last bit), and on the CPU it is also the faster layout
        return tokens_to_map(out, h, w).contiguous()

    @torch.no_grad()
    def sample_logits(
        self,
        img: Tensor,
        steps: Optional[int] = None,
        noise: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        trace: Optional[SamplerTrace] = None,
    ) -> Tensor:
        """Normalised images (B, 3, H, W) → logits (B, num_classes, H, W), like the original's ``encode_decode``.

        With ``accumulation`` the output is the mean of the steps' softmax probabilities instead.
        """
        out = self.sample_features(self.extract_feat(img), steps, noise, generator, trace)
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)


    def _decode_tokens(self, feat: Tensor, h: int, w: int, film: List[Tuple[Tensor, Tensor]]) -> Tensor:
        if self.chunked_decoder and can_decode_chunked(self.decode_head):
            return decode_tokens_chunked(self.decode_head, feat, h, w, film)
        return self.decode_head.classify_tokens(self.decode_head.forward_tokens(feat, h, w, film))

class SelfAlignedDDP(DDP):
    """DDP fine-tuned on its own predictions ("self-aligned denoising").

    Instead of the ground truth, the map that gets noised is the model's one-step prediction from pure
    noise at t = 1 (made without gradients); the same noise draw is reused to noise it.
    """

    def forward_train(
        self, img: Tensor, gt_semantic_seg: Tensor, *, times: Optional[Tensor] = None, noise: Optional[Tensor] = None
    ) -> Dict[str, Tensor]:
        x = self.extract_feat(img)
        if noise is None:
            noise = native.randn_like(x)
        with torch.no_grad():
            log_snr_1 = self.log_snr(torch.ones((x.shape[0],), device=x.device).float())
            preds = self._denoise_logits(x, noise, log_snr_1).argmax(dim=1)
        clean = self.label_encoder(preds)
        if times is None:
            times = self.draw_times(x.shape[0], x.device)
        return self._denoising_losses(x, clean, times, noise, gt_semantic_seg)
