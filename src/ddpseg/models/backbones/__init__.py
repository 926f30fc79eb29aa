"""Image backbones: ConvNeXt (mmcls 0.x) and Swin Transformer (mmseg 0.x), with pretrained-weight loading."""

from __future__ import annotations

from torch import nn

from . import convnext, swin, swin_checkpoint
from .convnext import ConvNeXt
from .pretrained import LoadReport, StateDictSource
from .swin import SwinTransformer

__all__ = ["ConvNeXt", "SwinTransformer", "LoadReport", "load_pretrained", "convnext", "swin", "swin_checkpoint"]


def load_pretrained(model: nn.Module, source: StateDictSource, strict: bool = False) -> LoadReport:
    """Convert and load ImageNet weights (path or state dict) into either backbone; see the per-family
    ``convnext.load_pretrained`` / ``swin.load_pretrained`` for the accepted formats."""
    if isinstance(model, ConvNeXt):
        return convnext.load_pretrained(model, source, strict=strict)
    if isinstance(model, SwinTransformer):
        return swin.load_pretrained(model, source, strict=strict)
    raise TypeError(f"load_pretrained: no converter for {type(model).__name__}; expected ConvNeXt or SwinTransformer")
