"""ConvNeXt backbone with the numerics and state-dict names of mmcls 0.x (``mmcls.ConvNeXt``).

DDP's ConvNeXt configs build mmcls's ConvNeXt, so its checkpoints use mmcls names
(``downsample_layers.*``, ``stages.<i>.<j>.depthwise_conv`` …, ``norm<i>``). Details kept on purpose:

* the stem and block LayerNorms use ``eps`` from ``norm_cfg`` (1e-6), but the LayerNorms inside the
  three downsampling layers use PyTorch's default ``eps=1e-5`` (as mmcls does; the official release
  uses 1e-6 there);
* odd feature sizes are floored by the strided convolutions (120×200 → 30×50, 15×25, 7×12, 3×6);
* ``gap_before_final_norm`` pools before the per-output norm (classification) or not (dense tasks).

Reading order: LayerNorm2d → block → model → ``convert_pretrained`` → ``load_pretrained``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import Tensor, nn

from .layers import DepthwiseConv2d, DropPath, check_gelu, gelu_linear, layer_norm_settings
from .pretrained import LoadReport, StateDictSource, load_converted, read_source, source_name, unwrap_state_dict

__all__ = ["ConvNeXt", "ConvNeXtBlock", "LayerNorm2d", "ARCH_SETTINGS", "convert_pretrained", "load_pretrained"]

ARCH_SETTINGS: dict[str, dict[str, list[int]]] = {
    "tiny": {"depths": [3, 3, 9, 3], "channels": [96, 192, 384, 768]},
    "small": {"depths": [3, 3, 27, 3], "channels": [96, 192, 384, 768]},
    "base": {"depths": [3, 3, 27, 3], "channels": [128, 256, 512, 1024]},
    "large": {"depths": [3, 3, 27, 3], "channels": [192, 384, 768, 1536]},
    "xlarge": {"depths": [3, 3, 27, 3], "channels": [256, 512, 1024, 2048]},
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map; output is contiguous NCHW."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"LayerNorm2d expects (N, C, H, W), got shape {tuple(x.shape)}")
        x = x.permute(0, 2, 3, 1).contiguous()
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


class ConvNeXtBlock(nn.Module):
    """dwconv 7×7 → LayerNorm → Linear (×mlp_ratio) → GELU → Linear → layer scale → drop path, residual.

    The norm and both Linears run channels-last, which gives the same values as mmcls's
    LayerNorm2d-then-permute order with two fewer copies.
    """

    def __init__(
        self,
        channels: int,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.depthwise_conv = DepthwiseConv2d(channels, kernel_size=7)
        self.norm = nn.LayerNorm(channels, eps=norm_eps)
        hidden = int(mlp_ratio * channels)
        self.pointwise_conv1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.pointwise_conv2 = nn.Linear(hidden, channels)
        if layer_scale_init_value > 0:
            self.gamma: Optional[nn.Parameter] = nn.Parameter(layer_scale_init_value * torch.ones(channels))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _residual(self, x: Tensor) -> Tensor:
        y = self.depthwise_conv(x).permute(0, 2, 3, 1)
        y = gelu_linear(self.pointwise_conv1(self.norm(y)), self.pointwise_conv2)  # = fc2(act(fc1(norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint.checkpoint(self._residual, x, use_reentrant=False)
        return self._residual(x)


class ConvNeXt(nn.Module):
    """ConvNeXt (`A ConvNet for the 2020s <https://arxiv.org/abs/2201.03545>`_), mmcls 0.x flavour.

    Args:
        arch: ``'tiny' | 'small' | 'base' | 'large' | 'xlarge'`` or ``dict(depths=[...], channels=[...])``.
        in_channels: image channels.
        stem_patch_size: kernel and stride of the stem convolution.
        norm_cfg: LayerNorm config of the stem, blocks and output norms (default ``LN2d, eps=1e-6``).
        act_cfg: activation of the blocks; only GELU.
        linear_pw_conv: must be True (pointwise convs as Linear layers, the released layout).
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        layer_scale_init_value: initial layer-scale ``gamma``; 0 disables layer scale.
        out_indices: stages whose (normed) output is returned; negatives count from the end.
        frozen_stages: the first ``frozen_stages`` (downsample + stage) pairs get no gradient and stay in eval.
        gap_before_final_norm: average-pool each output to (N, C) before its norm (classification use).
        with_cp: gradient checkpointing per block while training.

    Attributes:
        feature_channels: channels of each returned map, in ``out_indices`` order.
    """

    arch_settings = ARCH_SETTINGS

    def __init__(
        self,
        arch: Union[str, Mapping[str, Sequence[int]]] = "tiny",
        in_channels: int = 3,
        stem_patch_size: int = 4,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = None,
        linear_pw_conv: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        out_indices: Union[int, Sequence[int]] = -1,
        frozen_stages: int = 0,
        gap_before_final_norm: bool = True,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f"ConvNeXt arch {arch!r} unknown; expected one of {sorted(ARCH_SETTINGS)} or a dict")
            arch = ARCH_SETTINGS[arch]
        if not ("depths" in arch and "channels" in arch) or len(arch["depths"]) != len(arch["channels"]):
            raise ValueError(f"ConvNeXt arch dict needs equally long 'depths' and 'channels', got {dict(arch)!r}")
        if not linear_pw_conv:
            raise ValueError("ConvNeXt: linear_pw_conv=False (1x1-conv pointwise layers) is not supported")
        check_gelu(act_cfg, "ConvNeXt")
        eps, norm_grad = layer_norm_settings(norm_cfg, 1e-6, ("LN2d", "LN"), "ConvNeXt")

        self.depths = list(arch["depths"])
        self.channels = list(arch["channels"])
        self.num_stages = len(self.depths)
        self.out_indices = _normalise_indices(out_indices, self.num_stages)
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        self.feature_channels = [self.channels[i] for i in self.out_indices]

        # float32 linspace, as the original, so drop probabilities match to the last bit
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(self.depths), device="cpu")]
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, self.channels[0], kernel_size=stem_patch_size, stride=stem_patch_size),
                    LayerNorm2d(self.channels[0], eps=eps),
                )
            ]
        )
        self.stages = nn.ModuleList()
        first_block = 0
        for i, (depth, channels) in enumerate(zip(self.depths, self.channels)):
            if i > 0:
                self.downsample_layers.append(
                    nn.Sequential(
                        LayerNorm2d(self.channels[i - 1]),  # default eps=1e-5, as mmcls
                        nn.Conv2d(self.channels[i - 1], channels, kernel_size=2, stride=2),
                    )
                )
            blocks = [
                ConvNeXtBlock(channels, rates[first_block + j], layer_scale_init_value, norm_eps=eps, with_cp=with_cp)
                for j in range(depth)
            ]
            self.stages.append(nn.Sequential(*blocks))
            first_block += depth
            if i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(channels, eps=eps))
        if not norm_grad:  # as mmcv's build_norm_layer: only the norms built from norm_cfg
            downsample_norms = {id(layer[0]) for layer in self.downsample_layers[1:]}
            for module in self.modules():
                if isinstance(module, nn.LayerNorm) and id(module) not in downsample_norms:
                    module.requires_grad_(False)
        self._freeze_stages()

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) conv/linear weights, zero biases, LayerNorm 1/0.

        This is the official ConvNeXt / mmpretrain scheme. Note that DDP's mmcls 0.x left PyTorch's
        default initialisation in place (its ConvNeXt has no ``init_cfg``); a freshly constructed
        module, before this call, matches that.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(N, C, H, W) image → one map per ``out_indices`` entry (NCHW, or (N, C) with GAP)."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                norm = getattr(self, f"norm{i}")
                if self.gap_before_final_norm:
                    outs.append(norm(x.mean((-2, -1), keepdim=True)).flatten(1))
                else:
                    outs.append(norm(x))
        return tuple(outs)

    def train(self, mode: bool = True) -> "ConvNeXt":
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                module.requires_grad_(False)


def _normalise_indices(out_indices: Union[int, Sequence[int]], num_stages: int) -> list[int]:
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    result = []
    for index in indices:
        resolved = index + num_stages if index < 0 else index
        if not 0 <= resolved < num_stages:
            raise ValueError(f"out_indices entry {index} is out of range for {num_stages} stages")
        result.append(resolved)
    return result


# ---------------------------------------------------------------------------------------------
# pretrained weights

# official facebookresearch release → mmcls names (block internals only; outer names agree)
_OFFICIAL_RENAMES = (
    (re.compile(r"\.dwconv\."), ".depthwise_conv."),
    (re.compile(r"\.pwconv([12])\."), r".pointwise_conv\1."),
    (re.compile(r"^norm\."), "norm3."),  # final (pooled) norm; mmcls's converter maps it to norm3
)

# timm → mmcls names
_TIMM_RENAMES = (
    (re.compile(r"^stem\.([01])\."), r"downsample_layers.0.\1."),
    (re.compile(r"^stages\.(\d+)\.downsample\.([01])\."), r"downsample_layers.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.conv_dw\."), ".depthwise_conv."),
    (re.compile(r"\.mlp\.fc([12])\."), r".pointwise_conv\1."),
    (re.compile(r"^(head\.norm|norm_pre)\."), "norm3."),
)


def convert_pretrained(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename a ConvNeXt ImageNet checkpoint to this module's (= mmcls's) names.

    Accepts mmcls/mmpretrain (``backbone.`` prefix), the official facebookresearch release
    (``downsample_layers``, ``stages.i.j.dwconv/pwconv1/pwconv2``, ``norm``, ``head``) and timm
    (``stem``, ``stages.i.downsample``, ``stages.i.blocks.j.conv_dw/mlp.fc1``, ``head.norm``), wrapped in
    ``state_dict``/``model`` or not. Classifier heads are dropped; the final classification norm
    becomes ``norm3`` as in mmcls's converter. Pure function: tensors are not copied.
    """
    sd = unwrap_state_dict(state_dict)
    timm = any(k.startswith("stem.") or ".blocks." in k for k in sd)
    renames = _TIMM_RENAMES if timm else _OFFICIAL_RENAMES
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("head.") and not key.startswith("head.norm."):
            continue
        for pattern, replacement in renames:
            key = pattern.sub(replacement, key)
        if re.search(r"\.pointwise_conv[12]\.weight$", key) and value.dim() == 4:
            value = value.flatten(1)  # timm conv_mlp variants store the Linears as 1×1 convs
        out[key] = value
    return out


def load_pretrained(model: ConvNeXt, source: StateDictSource, strict: bool = False) -> LoadReport:
    """Load ImageNet (or any ConvNeXt) weights from a path or a state dict into ``model``.

    Returns a :class:`LoadReport`; with ``strict=True`` a partial match raises ``ValueError``.
    """
    converted = convert_pretrained(read_source(source))
    return load_converted(model, converted, strict=strict, source=source_name(source), resized=[])
