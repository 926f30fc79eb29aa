"""Small building blocks shared by the neck and the heads: norm/activation factories, conv-norm-act."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

__all__ = ["build_norm", "build_activation", "ConvNormAct"]


def build_norm(cfg: Optional[dict], channels: int) -> Optional[nn.Module]:
    """A 2-d normalisation layer from an mmseg-style ``norm_cfg`` (BN, SyncBN, GN), or ``None``.

    ``SyncBN`` is built as plain BatchNorm: the trainer converts it to SyncBatchNorm when the run is
    distributed, so a single-process run (or CPU inference) needs no process group.
    """
    if cfg is None:
        return None
    cfg = dict(cfg)
    kind = cfg.pop("type")
    requires_grad = cfg.pop("requires_grad", True)
    if kind in ("BN", "BN2d", "SyncBN"):
        layer = nn.BatchNorm2d(channels, eps=cfg.pop("eps", 1e-5), momentum=cfg.pop("momentum", 0.1))
    elif kind == "GN":
        layer = nn.GroupNorm(cfg.pop("num_groups"), channels, eps=cfg.pop("eps", 1e-5))
    else:
        raise ValueError(f"norm_cfg type must be one of BN, SyncBN, GN; got {kind!r}")
    if cfg:
        raise ValueError(f"norm_cfg of type {kind!r} has unknown keys {sorted(cfg)}")
    for p in layer.parameters():
        p.requires_grad = requires_grad
    return layer


_ACTIVATIONS = {"ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU}


def build_activation(cfg: Optional[dict]) -> Optional[nn.Module]:
    """An activation from an mmcv-style ``act_cfg`` (``None`` means no activation)."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    kind = cfg.pop("type")
    cfg.pop("inplace", None)  # in-place buys nothing here and breaks autograd in places
    if kind not in _ACTIVATIONS:
        raise ValueError(f"act_cfg type must be one of {sorted(_ACTIVATIONS)}; got {kind!r}")
    return _ACTIVATIONS[kind](**cfg)


class ConvNormAct(nn.Module):
    """Conv2d → optional norm → optional activation; the conv has a bias only when there is no norm.

    The norm is registered as ``bn`` or ``gn`` (as mmcv names it), not ``norm``: the published optimizer
    configs give zero weight decay to parameters whose name contains "norm", and the original's
    GroupNorm/BatchNorm here are not among them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = dict(type="ReLU"),
    ) -> None:
        super().__init__()
        norm = build_norm(norm_cfg, out_channels)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=norm is None
        )
        self.norm_name = "gn" if isinstance(norm, nn.GroupNorm) else "bn"
        self.add_module(self.norm_name, norm if norm is not None else nn.Identity())
        act = build_activation(act_cfg)
        self.act = act if act is not None else nn.Identity()

    @property
    def norm(self) -> nn.Module:
        return getattr(self, self.norm_name)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))
