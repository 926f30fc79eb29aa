"""Config dicts (mmseg 0.x layout) → modules, through one explicit table per component.

Modules take typed arguments; everything that reads a config section lives here. Unknown types and
unknown keys are errors that name the section and the key.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional

from torch import nn

from ..config import ConfigError, check_keys
from .heads import DeformableHeadWithTime, FCNHead
from .necks import FPN, DDPNeck, MultiStageMerging
from .segmentor import DDP, SelfAlignedDDP

__all__ = ["build_model", "build_backbone", "ModelConfigError", "BACKBONES", "SEGMENTORS"]


class ModelConfigError(ConfigError):
    """A model config section has an unknown type, a missing key or an unsupported value."""


_check_keys = check_keys


def _require(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ModelConfigError(f"{where}: missing required key {key!r}")
    return section[key]


def _plain(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in dict(cfg).items()}


# ---------------------------------------------------------------------------- backbones
def _convnext(**kwargs: Any) -> nn.Module:
    from .backbones.convnext import ConvNeXt

    return ConvNeXt(**kwargs)


def _swin(**kwargs: Any) -> nn.Module:
    from .backbones.swin import SwinTransformer

    return SwinTransformer(**kwargs)


BACKBONES: Dict[str, Callable[..., nn.Module]] = {
    "ConvNeXt": _convnext,
    "mmcls.ConvNeXt": _convnext,
    "mmpretrain.ConvNeXt": _convnext,
    "SwinTransformer": _swin,
    "mmseg.SwinTransformer": _swin,
}


def build_backbone(cfg: Mapping[str, Any], load_pretrained: bool = False) -> nn.Module:
    """Build a backbone. With ``load_pretrained`` (training), also initialise it as the original's
    ``model.init_weights()`` does: load ``init_cfg=dict(type='Pretrained', checkpoint=...)``, or without
    one, the backbone's from-scratch init (Swin: mmseg's truncated normal; mmcls 0.x ConvNeXt has none and
    keeps PyTorch's defaults)."""
    cfg = _plain(cfg)
    kind = cfg.pop("type", None)
    if kind not in BACKBONES:
        raise ModelConfigError(f"model.backbone.type: unknown backbone {kind!r}; known: {sorted(BACKBONES)}")
    init_cfg = cfg.pop("init_cfg", None)
    if cfg.pop("pretrained", None) is not None:
        raise ModelConfigError("model.backbone.pretrained is deprecated (and not an mmcls ConvNeXt argument); use "
                               "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)")
    try:
        backbone = BACKBONES[kind](**cfg)
    except (TypeError, ValueError) as err:
        raise ModelConfigError(f"model.backbone ({kind}): {err}") from None
    if load_pretrained and not (init_cfg and init_cfg.get("type") == "Pretrained"):
        from .backbones.swin import SwinTransformer

        if isinstance(backbone, SwinTransformer):
            backbone.init_weights()
    if load_pretrained and init_cfg and init_cfg.get("type") == "Pretrained":
        from .backbones import load_pretrained as _load

        checkpoint = init_cfg.get("checkpoint")
        if checkpoint is None:
            raise ModelConfigError(
                "model.backbone.init_cfg is dict(type='Pretrained') without a checkpoint: pass the ImageNet weights "
                "with --cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth, or set "
                "model.backbone.init_cfg=None to train the backbone from scratch"
            )
        if isinstance(checkpoint, str) and checkpoint.startswith(("http://", "https://")):
            raise ModelConfigError(
                f"model.backbone.init_cfg.checkpoint is a URL ({checkpoint}); ddpseg never downloads at run time. "
                "Download the file and pass its local path, e.g. "
                "--cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth"
            )
        from ..engine.checkpoint import CheckpointError

        try:
            _load(backbone, checkpoint)
        except (CheckpointError, FileNotFoundError) as err:
            raise CheckpointError(f"model.backbone.init_cfg.checkpoint: {err}") from err
    return backbone


# ---------------------------------------------------------------------------- neck
def _build_neck(cfg: Any) -> DDPNeck:
    if not isinstance(cfg, (list, tuple)) or len(cfg) != 2:
        raise ModelConfigError("model.neck must be a list [FPN, MultiStageMerging] as in the DDP configs")
    fpn_cfg, merge_cfg = _plain(cfg[0]), _plain(cfg[1])
    if fpn_cfg.pop("type", None) != "FPN" or merge_cfg.pop("type", None) != "MultiStageMerging":
        raise ModelConfigError("model.neck must be [dict(type='FPN', ...), dict(type='MultiStageMerging', ...)]")
    _check_keys(fpn_cfg, {"in_channels", "out_channels", "num_outs", "norm_cfg", "act_cfg", "init_cfg"}, "model.neck[0] (FPN)")
    num_outs = fpn_cfg.get("num_outs", len(fpn_cfg["in_channels"]))
    if num_outs != len(fpn_cfg["in_channels"]):
        raise ModelConfigError(f"model.neck[0].num_outs ({num_outs}) must equal len(in_channels) for DDP")
    fpn = FPN(fpn_cfg["in_channels"], fpn_cfg["out_channels"], fpn_cfg.get("norm_cfg"), fpn_cfg.get("act_cfg"))
    _check_keys(
        merge_cfg,
        {"in_channels", "out_channels", "kernel_size", "norm_cfg", "act_cfg", "align_corners", "init_cfg", "conv_cfg"},
        "model.neck[1] (MultiStageMerging)",
    )
    merge = MultiStageMerging(
        merge_cfg["in_channels"],
        merge_cfg["out_channels"],
        merge_cfg.get("kernel_size", 1),
        merge_cfg.get("norm_cfg"),
        merge_cfg.get("act_cfg"),
        merge_cfg.get("align_corners", False),
    )
    return DDPNeck(fpn, merge)


# ---------------------------------------------------------------------------- heads
_DECODE_KEYS = {
    "type", "in_channels", "channels", "in_index", "dropout_ratio", "num_classes", "norm_cfg", "align_corners",
    "num_feature_levels", "encoder", "positional_encoding", "loss_decode", "ignore_index", "init_cfg",
    "input_transform", "act_cfg", "conv_cfg", "sampler",
    "fused_training",  # ddpseg: False trains the decoder under plain autograd (models/train_decoder.py)
}  # fmt: skip


def _loss_weight(cfg: Optional[Mapping[str, Any]], where: str) -> float:
    if cfg is None:
        return 1.0
    cfg = _plain(cfg)
    if cfg.get("type", "CrossEntropyLoss") != "CrossEntropyLoss" or cfg.get("use_sigmoid", False):
        raise ModelConfigError(f"{where}: only CrossEntropyLoss with use_sigmoid=False is supported, got {cfg}")
    if cfg.get("avg_non_ignore", False) or cfg.get("class_weight") is not None:
        raise ModelConfigError(f"{where}: avg_non_ignore and class_weight are not supported")
    _check_keys(cfg, {"type", "use_sigmoid", "loss_weight", "loss_name", "avg_non_ignore", "class_weight"}, where)
    return float(cfg.get("loss_weight", 1.0))


def _single_channels(value: Any, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ModelConfigError(f"{where}: DDP's decoder takes one input map, got in_channels={value}")
        value = value[0]
    return int(value)


def _build_decode_head(cfg: Mapping[str, Any]) -> DeformableHeadWithTime:
    where = "model.decode_head"
    cfg = _plain(cfg)
    if cfg.get("type") != "DeformableHeadWithTime":
        raise ModelConfigError(f"{where}.type must be 'DeformableHeadWithTime', got {cfg.get('type')!r}")
    _check_keys(cfg, _DECODE_KEYS, where)
    embed = _single_channels(_require(cfg, "in_channels", where), f"{where}.in_channels")
    enc = _plain(_require(cfg, "encoder", where))
    _check_keys(enc, {"type", "num_layers", "transformerlayers", "post_norm_cfg", "init_cfg"}, f"{where}.encoder")
    layer = _plain(_require(enc, "transformerlayers", f"{where}.encoder"))
    _check_keys(
        layer,
        {"type", "use_time_mlp", "attn_cfgs", "ffn_cfgs", "operation_order", "norm_cfg", "batch_first", "init_cfg"},
        f"{where}.encoder.transformerlayers",
    )
    order = tuple(layer.get("operation_order", ()))
    if order != ("self_attn", "norm", "ffn", "norm") or not layer.get("use_time_mlp", False):
        raise ModelConfigError(
            f"{where}.encoder.transformerlayers: only operation_order ('self_attn', 'norm', 'ffn', 'norm') "
            f"with use_time_mlp=True is supported (got {order}, use_time_mlp={layer.get('use_time_mlp')})"
        )
    attn = _plain(_require(layer, "attn_cfgs", f"{where}.encoder.transformerlayers"))
    _check_keys(
        attn,
        {"type", "embed_dims", "num_heads", "num_levels", "num_points", "dropout", "batch_first", "im2col_step", "norm_cfg", "init_cfg"},
        f"{where}.encoder.transformerlayers.attn_cfgs",
    )
    ffn = _plain(layer.get("ffn_cfgs", {}))
    _check_keys(
        ffn,
        {"type", "embed_dims", "feedforward_channels", "num_fcs", "ffn_drop", "act_cfg", "add_identity", "dropout_layer", "init_cfg"},
        f"{where}.encoder.transformerlayers.ffn_cfgs",
    )
    if ffn.get("num_fcs", 2) != 2:
        raise ModelConfigError(f"{where}: ffn_cfgs.num_fcs must be 2")
    for name, value in (("attn_cfgs.embed_dims", attn.get("embed_dims", embed)), ("ffn_cfgs.embed_dims", ffn.get("embed_dims", embed))):
        if value != embed:
            raise ModelConfigError(f"{where}.encoder.transformerlayers.{name} ({value}) must equal in_channels ({embed})")
    pos = _plain(_require(cfg, "positional_encoding", where))
    _check_keys(pos, {"type", "num_feats", "temperature", "normalize", "scale", "eps", "offset", "init_cfg"}, f"{where}.positional_encoding")
    if pos.get("type", "SinePositionalEncoding") != "SinePositionalEncoding":
        raise ModelConfigError(f"{where}.positional_encoding.type must be 'SinePositionalEncoding'")
    head = DeformableHeadWithTime(
        in_channels=embed,
        channels=cfg.get("channels", embed),
        num_classes=int(_require(cfg, "num_classes", where)),
        time_dims=embed * 4,
        num_layers=int(enc.get("num_layers", 6)),
        num_heads=int(attn.get("num_heads", 8)),
        num_levels=int(cfg.get("num_feature_levels", attn.get("num_levels", 1))),
        num_points=int(attn.get("num_points", 4)),
        ffn_channels=int(ffn.get("feedforward_channels", 1024)),
        pos_num_feats=int(pos["num_feats"]),
        pos_temperature=pos.get("temperature", 10000),
        pos_normalize=bool(pos.get("normalize", False)),
        pos_offset=float(pos.get("offset", 0.0)),
        pos_scale=float(pos.get("scale", 2 * math.pi)),
        pos_eps=float(pos.get("eps", 1e-6)),
        attn_drop=float(attn.get("dropout", 0.1)),
        ffn_drop=float(ffn.get("ffn_drop", 0.0)),
        act_cfg=ffn.get("act_cfg", dict(type="ReLU")),
        ignore_index=int(cfg.get("ignore_index", 255)),
        align_corners=bool(cfg.get("align_corners", False)),
        loss_weight=_loss_weight(cfg.get("loss_decode"), f"{where}.loss_decode"),
    )
    fused = cfg.get("fused_training", True)
    if not isinstance(fused, bool):
        raise ModelConfigError(f"{where}.fused_training must be True or False, got {fused!r}")
    head.fused_training = fused
    return head


def _build_aux_head(cfg: Mapping[str, Any]) -> FCNHead:
    where = "model.auxiliary_head"
    cfg = _plain(cfg)
    if cfg.get("type") != "FCNHead":
        raise ModelConfigError(f"{where}.type must be 'FCNHead', got {cfg.get('type')!r}")
    _check_keys(
        cfg,
        {"type", "in_channels", "in_index", "channels", "num_convs", "kernel_size", "dilation", "concat_input",
         "dropout_ratio", "num_classes", "norm_cfg", "act_cfg", "align_corners", "loss_decode", "ignore_index",
         "init_cfg", "conv_cfg"},
        where,
    )  # fmt: skip
    if cfg.get("in_index", 0) not in (0, -1):
        raise ModelConfigError(f"{where}.in_index must be 0: the neck gives one map")
    return FCNHead(
        in_channels=_single_channels(cfg["in_channels"], f"{where}.in_channels"),
        channels=int(cfg["channels"]),
        num_classes=int(cfg["num_classes"]),
        num_convs=int(cfg.get("num_convs", 2)),
        kernel_size=int(cfg.get("kernel_size", 3)),
        dilation=int(cfg.get("dilation", 1)),
        concat_input=bool(cfg.get("concat_input", True)),
        dropout_ratio=float(cfg.get("dropout_ratio", 0.1)),
        norm_cfg=cfg.get("norm_cfg"),
        act_cfg=cfg.get("act_cfg", dict(type="ReLU")),
        ignore_index=int(cfg.get("ignore_index", 255)),
        align_corners=bool(cfg.get("align_corners", False)),
        loss_weight=_loss_weight(cfg.get("loss_decode"), f"{where}.loss_decode"),
    )


# ---------------------------------------------------------------------------- segmentor
SEGMENTORS: Dict[str, type] = {"DDP": DDP, "SelfAlignedDDP": SelfAlignedDDP}

_SEGMENTOR_KEYS = {
    "type", "backbone", "neck", "decode_head", "auxiliary_head", "train_cfg", "test_cfg", "pretrained", "init_cfg",
    "bit_scale", "timesteps", "randsteps", "time_difference", "learned_sinusoidal_dim", "sample_range",
    "noise_schedule", "diffusion", "accumulation",
}  # fmt: skip
_DIFFUSION_KEYS = ("bit_scale", "timesteps", "randsteps", "time_difference", "learned_sinusoidal_dim", "sample_range",
                   "noise_schedule", "diffusion", "accumulation")  # fmt: skip


def build_model(model_cfg: Mapping[str, Any], load_pretrained: bool = False) -> DDP:
    """Build the segmentor described by a config's ``model`` section.

    ``load_pretrained`` loads the backbone's ImageNet weights named by ``backbone.init_cfg`` (for training
    from scratch); inference leaves it off because the full checkpoint is loaded afterwards.
    """
    cfg = _plain(model_cfg)
    kind = cfg.get("type")
    if kind not in SEGMENTORS:
        raise ModelConfigError(f"model.type: unknown segmentor {kind!r}; known: {sorted(SEGMENTORS)}")
    _check_keys(cfg, _SEGMENTOR_KEYS, "model")
    if cfg.get("pretrained") is not None:
        raise ModelConfigError("model.pretrained is deprecated; use model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)")
    decode_head = _build_decode_head(_require(cfg, "decode_head", "model"))
    aux = cfg.get("auxiliary_head")
    if isinstance(aux, (list, tuple)):
        raise ModelConfigError("model.auxiliary_head: a list of auxiliary heads is not supported by DDP")
    neck = _build_neck(_require(cfg, "neck", "model"))
    if neck.merge.conv.conv.out_channels != decode_head.in_channels:
        raise ModelConfigError(
            f"model.neck[1].out_channels ({neck.merge.conv.conv.out_channels}) must equal "
            f"model.decode_head.in_channels ({decode_head.in_channels})"
        )
    kwargs = {k: cfg[k] for k in _DIFFUSION_KEYS if k in cfg}
    if "sample_range" in kwargs:
        kwargs["sample_range"] = tuple(kwargs["sample_range"])
    model = SEGMENTORS[kind](
        backbone=build_backbone(_require(cfg, "backbone", "model"), load_pretrained),
        neck=neck,
        decode_head=decode_head,
        auxiliary_head=_build_aux_head(aux) if aux else None,
        num_classes=decode_head.num_classes,
        align_corners=decode_head.align_corners,
        ignore_index=decode_head.ignore_index,
        **kwargs,
    )
    model.test_cfg = dict(cfg.get("test_cfg") or {"mode": "whole"})
    return model
