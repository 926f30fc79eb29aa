"""Image backbones: ConvNeXt (mmcls 0.x) and Swin Transformer (mmseg 0.x), with pretrained-weight loading."""

from . import convnext, swin, swin_checkpoint
from .convnext import ConvNeXt
from .pretrained import LoadReport
from .swin import SwinTransformer

__all__ = ["ConvNeXt", "SwinTransformer", "LoadReport", "convnext", "swin", "swin_checkpoint"]
