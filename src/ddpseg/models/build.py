"""Config dicts (mmseg 0.x layout) → modules, through one explicit table per component.

Modules take typed arguments; everything that reads a config section lives here. Unknown types and
unknown keys are errors that name the section and the key.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional

from torch import nn

from ..config import ConfigError, check_bool, check_int, check_keys, check_number
from .heads import DeformableHeadWithTime, FCNHead
from .necks import FPN, DDPNeck, MultiStageMerging
from .segmentor import DDP, SelfAlignedDDP

__all__ = ["build_model", "build_backbone", "check_test_cfg", "ModelConfigError", "BACKBONES", "SEGMENTORS"]


class ModelConfigError(ConfigError):
    """A model config section has an unknown type, a missing key or an unsupported value."""


def _check_keys(section: Mapping[str, Any], allowed: Any, where: str) -> None:
    check_keys(section, allowed, where, error=ModelConfigError)


_REQUIRED = object()


def _require(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ModelConfigError(f"{where}: missing required key {key!r}")
    return section[key]


def _get(section: Mapping[str, Any], key: str, where: str, default: Any) -> Any:
    return _require(section, key, where) if default is _REQUIRED else section.get(key, default)


def _int(section: Mapping[str, Any], key: str, where: str, default: Any = _REQUIRED,
         minimum: Optional[int] = None) -> int:
    """``section[key]`` as an int, or a ModelConfigError naming ``where.key``, the value and what was expected."""
    return check_int(_get(section, key, where, default), f"{where}.{key}", minimum=minimum, error=ModelConfigError)


def _float(section: Mapping[str, Any], key: str, where: str, default: Any = _REQUIRED,
           minimum: Optional[float] = None, maximum: Optional[float] = None) -> float:
    return check_number(_get(section, key, where, default), f"{where}.{key}", minimum=minimum, maximum=maximum,
                        error=ModelConfigError)


def _bool(section: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    return check_bool(section.get(key, default), f"{where}.{key}", error=ModelConfigError)


def _channel_list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ModelConfigError(f"{where} must be a list of channel counts, got {value!r}")
    return [check_int(c, f"{where}[{i}]", minimum=1, error=ModelConfigError) for i, c in enumerate(value)]


def _plain(cfg: Any, where: str) -> Dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ModelConfigError(f"{where} must be a dict, got {type(cfg).__name__} ({cfg!r})")
    return dict(cfg)


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
    cfg = _plain(cfg, "model.backbone")
    kind = cfg.pop("type", None)
    if kind not in BACKBONES:
        raise ModelConfigError(f"model.backbone.type: unknown backbone {kind!r}; known: {sorted(BACKBONES)}")
    init_cfg = _check_init_cfg(cfg.pop("init_cfg", None))
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


def _check_init_cfg(init_cfg: Any) -> Any:
    """mmcv's ``init_cfg``: None, a dict with a ``type`` or a list of them. A string is what ``--cfg-options``
    makes of ``init_cfg=dict(...)``, which it cannot parse."""
    where = "model.backbone.init_cfg"
    if isinstance(init_cfg, str):
        raise ModelConfigError(
            f"{where} must be a dict or None, got the string {init_cfg!r} (--cfg-options cannot write dict(...)); "
            f"write it as a literal, --cfg-options \"{where}={{'type': 'Pretrained', 'checkpoint': '/path/to/file.pth'}}\", "
            f"or set its keys one by one: --cfg-options {where}.type=Pretrained {where}.checkpoint=/path/to/file.pth "
            f"(add {where}._delete_=True where the config has init_cfg=None)"
        )
    for i, item in enumerate(init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]):
        if item is None and not isinstance(init_cfg, (list, tuple)):
            continue
        at = f"{where}[{i}]" if isinstance(init_cfg, (list, tuple)) else where
        if not isinstance(item, Mapping) or "type" not in item:
            raise ModelConfigError(f"{at} must be a dict with a 'type' (e.g. type='Pretrained'), got {item!r}")
        if item["type"] == "Pretrained":
            _check_keys(item, {"type", "checkpoint", "prefix", "map_location"}, at)
    if isinstance(init_cfg, (list, tuple)) and any(item.get("type") == "Pretrained" for item in init_cfg):
        raise ModelConfigError(f"{where}: give a Pretrained init_cfg as a dict, not inside a list")
    return init_cfg


# ---------------------------------------------------------------------------- neck
def _build_neck(cfg: Any) -> DDPNeck:
    if not isinstance(cfg, (list, tuple)) or len(cfg) != 2:
        raise ModelConfigError("model.neck must be a list [FPN, MultiStageMerging] as in the DDP configs")
    fpn_cfg, merge_cfg = _plain(cfg[0], "model.neck[0]"), _plain(cfg[1], "model.neck[1]")
    if fpn_cfg.pop("type", None) != "FPN" or merge_cfg.pop("type", None) != "MultiStageMerging":
        raise ModelConfigError("model.neck must be [dict(type='FPN', ...), dict(type='MultiStageMerging', ...)]")
    _check_keys(fpn_cfg, {"in_channels", "out_channels", "num_outs", "norm_cfg", "act_cfg", "init_cfg"}, "model.neck[0] (FPN)")
    in_channels = _channel_list(_require(fpn_cfg, "in_channels", "model.neck[0]"), "model.neck[0].in_channels")
    fpn_out = _int(fpn_cfg, "out_channels", "model.neck[0]", minimum=1)
    num_outs = _int(fpn_cfg, "num_outs", "model.neck[0]", len(in_channels))
    if num_outs != len(in_channels):
        raise ModelConfigError(f"model.neck[0].num_outs ({num_outs}) must equal len(in_channels) for DDP")
    fpn = FPN(in_channels, fpn_out, fpn_cfg.get("norm_cfg"), fpn_cfg.get("act_cfg"))
    _check_keys(
        merge_cfg,
        {"in_channels", "out_channels", "kernel_size", "norm_cfg", "act_cfg", "align_corners", "init_cfg", "conv_cfg"},
        "model.neck[1] (MultiStageMerging)",
    )
    merge_in = _channel_list(_require(merge_cfg, "in_channels", "model.neck[1]"), "model.neck[1].in_channels")
    if merge_in != [fpn_out] * len(in_channels):
        raise ModelConfigError(
            f"model.neck[1].in_channels ({merge_in}) must be the FPN's outputs: {[fpn_out] * len(in_channels)} "
            "(model.neck[0].out_channels for each of its levels)"
        )
    merge = MultiStageMerging(
        merge_in,
        _int(merge_cfg, "out_channels", "model.neck[1]", minimum=1),
        _int(merge_cfg, "kernel_size", "model.neck[1]", 1, minimum=1),
        merge_cfg.get("norm_cfg"),
        merge_cfg.get("act_cfg"),
        _bool(merge_cfg, "align_corners", "model.neck[1]", False),
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
    cfg = _plain(cfg, where)
    if cfg.get("type", "CrossEntropyLoss") != "CrossEntropyLoss" or cfg.get("use_sigmoid", False):
        raise ModelConfigError(f"{where}: only CrossEntropyLoss with use_sigmoid=False is supported, got {cfg}")
    if cfg.get("avg_non_ignore", False) or cfg.get("class_weight") is not None:
        raise ModelConfigError(f"{where}: avg_non_ignore and class_weight are not supported")
    _check_keys(cfg, {"type", "use_sigmoid", "loss_weight", "loss_name", "avg_non_ignore", "class_weight"}, where)
    return _float(cfg, "loss_weight", where, 1.0, minimum=0)


def _single_channels(value: Any, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ModelConfigError(f"{where}: DDP's decoder takes one input map, got in_channels={value}")
        value = value[0]
    return check_int(value, where, minimum=1, error=ModelConfigError)


def _build_decode_head(cfg: Mapping[str, Any]) -> DeformableHeadWithTime:
    where = "model.decode_head"
    cfg = _plain(cfg, where)
    if cfg.get("type") != "DeformableHeadWithTime":
        raise ModelConfigError(f"{where}.type must be 'DeformableHeadWithTime', got {cfg.get('type')!r}")
    _check_keys(cfg, _DECODE_KEYS, where)
    embed = _single_channels(_require(cfg, "in_channels", where), f"{where}.in_channels")
    enc = _plain(_require(cfg, "encoder", where), f"{where}.encoder")
    _check_keys(enc, {"type", "num_layers", "transformerlayers", "post_norm_cfg", "init_cfg"}, f"{where}.encoder")
    layer = _plain(_require(enc, "transformerlayers", f"{where}.encoder"), f"{where}.encoder.transformerlayers")
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
    attn = _plain(_require(layer, "attn_cfgs", f"{where}.encoder.transformerlayers"),
                  f"{where}.encoder.transformerlayers.attn_cfgs")
    _check_keys(
        attn,
        {"type", "embed_dims", "num_heads", "num_levels", "num_points", "dropout", "batch_first", "im2col_step", "norm_cfg", "init_cfg"},
        f"{where}.encoder.transformerlayers.attn_cfgs",
    )
    ffn = _plain(layer.get("ffn_cfgs", {}), f"{where}.encoder.transformerlayers.ffn_cfgs")
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
    pos = _plain(_require(cfg, "positional_encoding", where), f"{where}.positional_encoding")
    _check_keys(pos, {"type", "num_feats", "temperature", "normalize", "scale", "eps", "offset", "init_cfg"}, f"{where}.positional_encoding")
    if pos.get("type", "SinePositionalEncoding") != "SinePositionalEncoding":
        raise ModelConfigError(f"{where}.positional_encoding.type must be 'SinePositionalEncoding'")
    layers = f"{where}.encoder"
    attn_at, ffn_at = f"{layers}.transformerlayers.attn_cfgs", f"{layers}.transformerlayers.ffn_cfgs"
    pos_at = f"{where}.positional_encoding"
    arguments = dict(
        in_channels=embed,
        channels=_int(cfg, "channels", where, embed, minimum=1),
        num_classes=_int(cfg, "num_classes", where, minimum=1),
        time_dims=embed * 4,
        num_layers=_int(enc, "num_layers", layers, 6, minimum=1),
        num_heads=_int(attn, "num_heads", attn_at, 8, minimum=1),
        num_levels=_int(cfg, "num_feature_levels", where, _int(attn, "num_levels", attn_at, 1, minimum=1), minimum=1),
        num_points=_int(attn, "num_points", attn_at, 4, minimum=1),
        ffn_channels=_int(ffn, "feedforward_channels", ffn_at, 1024, minimum=1),
        pos_num_feats=_int(pos, "num_feats", pos_at, minimum=1),
        pos_temperature=pos.get("temperature", 10000),  # as written: the encoding's arithmetic follows its type
        pos_normalize=_bool(pos, "normalize", pos_at, False),
        pos_offset=_float(pos, "offset", pos_at, 0.0),
        pos_scale=_float(pos, "scale", pos_at, 2 * math.pi),
        pos_eps=_float(pos, "eps", pos_at, 1e-6, minimum=0),
        attn_drop=_float(attn, "dropout", attn_at, 0.1, minimum=0, maximum=1),
        ffn_drop=_float(ffn, "ffn_drop", ffn_at, 0.0, minimum=0, maximum=1),
        act_cfg=ffn.get("act_cfg", dict(type="ReLU")),
        ignore_index=_int(cfg, "ignore_index", where, 255),
        align_corners=_bool(cfg, "align_corners", where, False),
        loss_weight=_loss_weight(cfg.get("loss_decode"), f"{where}.loss_decode"),
    )
    _float(pos, "temperature", pos_at, 10000, minimum=0)
    try:
        head = DeformableHeadWithTime(**arguments)
    except (TypeError, ValueError) as err:
        raise ModelConfigError(f"{where}: {err}") from None
    fused = cfg.get("fused_training", True)
    if not isinstance(fused, bool):
        raise ModelConfigError(f"{where}.fused_training must be True or False, got {fused!r}")
    head.fused_training = fused
    return head


def _build_aux_head(cfg: Mapping[str, Any]) -> FCNHead:
    where = "model.auxiliary_head"
    cfg = _plain(cfg, where)
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
    try:
        return FCNHead(
            in_channels=_single_channels(_require(cfg, "in_channels", where), f"{where}.in_channels"),
            channels=_int(cfg, "channels", where, minimum=1),
            num_classes=_int(cfg, "num_classes", where, minimum=1),
            num_convs=_int(cfg, "num_convs", where, 2, minimum=0),
            kernel_size=_int(cfg, "kernel_size", where, 3, minimum=1),
            dilation=_int(cfg, "dilation", where, 1, minimum=1),
            concat_input=_bool(cfg, "concat_input", where, True),
            dropout_ratio=_float(cfg, "dropout_ratio", where, 0.1, minimum=0, maximum=1),
            norm_cfg=cfg.get("norm_cfg"),
            act_cfg=cfg.get("act_cfg", dict(type="ReLU")),
            ignore_index=_int(cfg, "ignore_index", where, 255),
            align_corners=_bool(cfg, "align_corners", where, False),
            loss_weight=_loss_weight(cfg.get("loss_decode"), f"{where}.loss_decode"),
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, ModelConfigError):
            raise
        raise ModelConfigError(f"{where}: {err}") from None


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
    cfg = _plain(model_cfg, "model")
    kind = cfg.get("type")
    if kind not in SEGMENTORS:
        raise ModelConfigError(f"model.type: unknown segmentor {kind!r}; known: {sorted(SEGMENTORS)}")
    _check_keys(cfg, _SEGMENTOR_KEYS, "model")
    if cfg.get("pretrained") is not None:
        raise ModelConfigError("model.pretrained is deprecated; use model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)")
    kwargs = _diffusion_arguments(cfg)
    test_cfg = check_test_cfg(cfg.get("test_cfg") or {"mode": "whole"}, "model.test_cfg")
    aux = cfg.get("auxiliary_head")
    if isinstance(aux, (list, tuple)):
        raise ModelConfigError("model.auxiliary_head: a list of auxiliary heads is not supported by DDP")
    decode_head = _build_decode_head(_require(cfg, "decode_head", "model"))
    if aux:
        _check_aux_fits(_plain(aux, "model.auxiliary_head"), decode_head)
    neck = _build_neck(_require(cfg, "neck", "model"))
    if neck.merge.conv.conv.out_channels != decode_head.in_channels:
        raise ModelConfigError(
            f"model.neck[1].out_channels ({neck.merge.conv.conv.out_channels}) must equal "
            f"model.decode_head.in_channels ({decode_head.in_channels})"
        )
    # Built in this order (decode head, neck, backbone, auxiliary head): the draws of the random initialisation
    # follow it.
    backbone = build_backbone(_require(cfg, "backbone", "model"), load_pretrained)
    feature_channels = list(getattr(backbone, "feature_channels", neck.fpn.in_channels))
    if neck.fpn.in_channels != feature_channels:
        raise ModelConfigError(
            f"model.neck[0].in_channels ({neck.fpn.in_channels}) must be the channels of the backbone's feature "
            f"maps: {feature_channels} (model.backbone, type {cfg['backbone'].get('type')!r})"
        )
    model = SEGMENTORS[kind](
        backbone=backbone,
        neck=neck,
        decode_head=decode_head,
        auxiliary_head=_build_aux_head(aux) if aux else None,
        num_classes=decode_head.num_classes,
        align_corners=decode_head.align_corners,
        ignore_index=decode_head.ignore_index,
        **kwargs,
    )
    model.test_cfg = test_cfg
    return model


def _check_aux_fits(aux: Mapping[str, Any], decode_head: DeformableHeadWithTime) -> None:
    """The auxiliary head is trained on the same labels and the same neck output as the decode head."""
    where = "model.auxiliary_head"
    num_classes = _int(aux, "num_classes", where, minimum=1)
    if num_classes != decode_head.num_classes:
        raise ModelConfigError(
            f"{where}.num_classes ({num_classes}) must equal model.decode_head.num_classes "
            f"({decode_head.num_classes}): both heads learn the same labels"
        )
    in_channels = _single_channels(_require(aux, "in_channels", where), f"{where}.in_channels")
    if in_channels != decode_head.in_channels:
        raise ModelConfigError(
            f"{where}.in_channels ({in_channels}) must equal the neck's output channels "
            f"(model.neck[1].out_channels = model.decode_head.in_channels = {decode_head.in_channels})"
        )


def _diffusion_arguments(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The segmentor's own settings (``timesteps``, ``bit_scale``, ...), checked by type and range."""
    kwargs: Dict[str, Any] = {}
    if "timesteps" in cfg:
        kwargs["timesteps"] = _int(cfg, "timesteps", "model", minimum=1)
    if "randsteps" in cfg:
        kwargs["randsteps"] = _int(cfg, "randsteps", "model", minimum=1)
    if "bit_scale" in cfg:
        value = cfg["bit_scale"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ModelConfigError(f"model.bit_scale must be a number > 0, got {value!r}")
        kwargs["bit_scale"] = float(value)
    if "time_difference" in cfg:
        kwargs["time_difference"] = _float(cfg, "time_difference", "model", minimum=0)
    if "learned_sinusoidal_dim" in cfg:
        dim = _int(cfg, "learned_sinusoidal_dim", "model", minimum=2)
        if dim % 2:
            raise ModelConfigError(f"model.learned_sinusoidal_dim must be an even integer >= 2, got {dim}")
        kwargs["learned_sinusoidal_dim"] = dim
    if "sample_range" in cfg:
        value = cfg["sample_range"]
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise ModelConfigError(f"model.sample_range must be a pair (t_min, t_max) in [0, 1], got {value!r}")
        low, high = (check_number(v, f"model.sample_range[{i}]", minimum=0, maximum=1, error=ModelConfigError)
                     for i, v in enumerate(value))
        if low >= high:
            raise ModelConfigError(
                f"model.sample_range must be a pair (t_min, t_max) with t_min < t_max, got {value!r}"
            )
        kwargs["sample_range"] = tuple(value)
    for key, choices in (("noise_schedule", ("cosine", "linear")), ("diffusion", ("ddim", "ddpm"))):
        if key in cfg:
            if cfg[key] not in choices:
                raise ModelConfigError(f"model.{key} must be one of {', '.join(map(repr, choices))}, got {cfg[key]!r}")
            kwargs[key] = cfg[key]
    if "accumulation" in cfg:
        kwargs["accumulation"] = _bool(cfg, "accumulation", "model", False)
    assert set(kwargs) <= set(_DIFFUSION_KEYS)
    return kwargs


def check_test_cfg(test_cfg: Any, where: str = "model.test_cfg") -> Dict[str, Any]:
    """mmseg's ``test_cfg``: ``mode`` 'whole', or 'slide' with ``crop_size`` and ``stride`` (ints or (h, w) pairs).
    Returns it as a plain dict; a misspelt key or mode is a :class:`ModelConfigError` naming it."""
    test_cfg = _plain(test_cfg, where)
    _check_keys(test_cfg, {"mode", "crop_size", "stride"}, where)
    mode = test_cfg.get("mode", "whole")
    if mode not in ("whole", "slide"):
        raise ModelConfigError(f"{where}.mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide":
        for key in ("crop_size", "stride"):
            value = _require(test_cfg, key, f"{where} (mode 'slide')")
            pair = value if isinstance(value, (list, tuple)) else [value]
            if len(pair) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                  for v in pair):
                raise ModelConfigError(f"{where}.{key} must be a positive int or an (h, w) pair of them, got {value!r}")
    return test_cfg
