"""Optimizer construction from an mmcv-style ``optimizer=dict(...)`` config.

Reproduces mmcv 1.x ``DefaultOptimizerConstructor``: without ``paramwise_cfg`` all parameters form one group;
with it every parameter gets its own group whose ``lr`` / ``weight_decay`` may be scaled by

* ``custom_keys``: ``{substring: dict(lr_mult=..., decay_mult=...)}`` matched against ``"<module prefix>.<param
  name>"``. Keys are tried longest first, ties in alphabetical order; the first match wins and every other rule
  below is skipped for that parameter.
* ``bias_lr_mult``: lr of every ``bias`` outside normalization layers.
* ``norm_decay_mult``: weight decay of BatchNorm / SyncBatchNorm / InstanceNorm / GroupNorm / LayerNorm parameters
  (by module class, so a custom norm class that does not subclass these is not covered — as in mmcv).
* ``dwconv_decay_mult``: weight decay of depth-wise ``nn.Conv2d`` (``in_channels == groups``).
* ``bias_decay_mult``: weight decay of the remaining ``bias`` parameters.
* ``bypass_duplicate``: skip a parameter already placed in an earlier group (shared modules).

Parameters with ``requires_grad=False`` still get a (plain) group, as in mmcv.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

# One explicit table: config ``type`` -> optimizer class.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "AdamW": torch.optim.AdamW,
    "Adam": torch.optim.Adam,
    "SGD": torch.optim.SGD,
}

PARAMWISE_KEYS = frozenset(
    {
        "custom_keys",
        "bias_lr_mult",
        "bias_decay_mult",
        "norm_decay_mult",
        "dwconv_decay_mult",
        "bypass_duplicate",
        # mmcv applies it to DeformConv2d offset layers only; ddpseg has none, so it is accepted and has no effect.
        "dcn_offset_lr_mult",
    }
)
_NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _validate_paramwise(paramwise_cfg: Mapping[str, Any], base_wd: float | None) -> None:
    if not isinstance(paramwise_cfg, Mapping):
        raise TypeError(f"optimizer.paramwise_cfg must be a dict, got {type(paramwise_cfg).__name__}")
    unknown = set(paramwise_cfg) - PARAMWISE_KEYS
    if unknown:
        raise ValueError(f"optimizer.paramwise_cfg has unknown keys {sorted(unknown)}; known: {sorted(PARAMWISE_KEYS)}")
    custom_keys = paramwise_cfg.get("custom_keys", {})
    if not isinstance(custom_keys, Mapping):
        raise TypeError(f"optimizer.paramwise_cfg.custom_keys must be a dict, got {type(custom_keys).__name__}")
    for key, rule in custom_keys.items():
        if not isinstance(rule, Mapping) or set(rule) - {"lr_mult", "decay_mult"}:
            raise ValueError(
                f"optimizer.paramwise_cfg.custom_keys[{key!r}] must be a dict with lr_mult and/or decay_mult, got {rule!r}"
            )
        if "decay_mult" in rule and base_wd is None:
            raise ValueError(f"custom_keys[{key!r}] sets decay_mult but optimizer.weight_decay is not set")
    for key in ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult"):
        if key in paramwise_cfg and base_wd is None:
            raise ValueError(f"optimizer.paramwise_cfg.{key} is set but optimizer.weight_decay is not set")


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    base_wd: float | None,
    paramwise_cfg: Mapping[str, Any],
    param_name_fn: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """One group per parameter, in ``model.named_modules()`` order, with mmcv's paramwise rules applied.

    ``param_name_fn`` maps a parameter's name to the name ``custom_keys`` are matched against — e.g. its name in
    the original code base where ddpseg renamed modules, so the original configs select the same parameters.
    """
    _validate_paramwise(paramwise_cfg, base_wd)
    custom_keys = paramwise_cfg.get("custom_keys", {})
    # Alphabetical first, then a stable sort by length (longest first): equal lengths stay alphabetical.
    sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
    bias_lr_mult = paramwise_cfg.get("bias_lr_mult", 1.0)
    bias_decay_mult = paramwise_cfg.get("bias_decay_mult", 1.0)
    norm_decay_mult = paramwise_cfg.get("norm_decay_mult", 1.0)
    dwconv_decay_mult = paramwise_cfg.get("dwconv_decay_mult", 1.0)
    bypass_duplicate = paramwise_cfg.get("bypass_duplicate", False)

    groups: list[dict[str, Any]] = []
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        is_norm = isinstance(module, _NORM_TYPES)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for name, param in module.named_parameters(recurse=False):
            group: dict[str, Any] = {"params": [param]}
            if not param.requires_grad:
                groups.append(group)
                seen.add(id(param))
                continue
            if bypass_duplicate and id(param) in seen:
                warnings.warn(f"{prefix}.{name} is shared with an earlier module; skipped (bypass_duplicate=True)", stacklevel=3)
                continue
            seen.add(id(param))
            # mmcv matches against f"{prefix}.{name}", so top-level parameters are seen as ".name".
            full_name = f"{prefix}.{name}"
            if param_name_fn is not None:
                full_name = param_name_fn(f"{prefix}.{name}" if prefix else name)
                full_name = full_name if "." in full_name else f".{full_name}"
            matched = next((key for key in sorted_keys if key in full_name), None)
            if matched is not None:
                group["lr"] = base_lr * custom_keys[matched].get("lr_mult", 1.0)
                if base_wd is not None:
                    group["weight_decay"] = base_wd * custom_keys[matched].get("decay_mult", 1.0)
            else:
                if name == "bias" and not is_norm:
                    group["lr"] = base_lr * bias_lr_mult
                if base_wd is not None:
                    if is_norm:
                        group["weight_decay"] = base_wd * norm_decay_mult
                    elif is_dwconv:
                        group["weight_decay"] = base_wd * dwconv_decay_mult
                    elif name == "bias":
                        group["weight_decay"] = base_wd * bias_decay_mult
            groups.append(group)
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    visit(model, "")
    return groups


def build_optimizer(
    model: nn.Module, cfg: Mapping[str, Any], *, param_name_fn: Callable[[str], str] | None = None
) -> torch.optim.Optimizer:
    """Build the optimizer described by ``cfg`` (the config's ``optimizer`` section) for ``model``.

    ``cfg`` holds ``type`` (one of :data:`OPTIMIZERS`), the optimizer's own keyword arguments (``lr``, ``betas``,
    ``weight_decay``, ``momentum``, ...) and optionally ``paramwise_cfg``. A DDP-wrapped model is unwrapped first.
    ``param_name_fn``: see :func:`build_param_groups`.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f"optimizer config must be a dict, got {type(cfg).__name__}")
    kwargs = dict(cfg)
    opt_type = kwargs.pop("type", None)
    if opt_type not in OPTIMIZERS:
        raise ValueError(f"optimizer.type={opt_type!r} is not supported; expected one of {sorted(OPTIMIZERS)}")
    paramwise_cfg = kwargs.pop("paramwise_cfg", None) or {}
    kwargs.pop("_delete_", None)
    if hasattr(model, "module"):  # DistributedDataParallel / DataParallel: group names come from the inner model
        model = model.module
    if "lr" not in kwargs:
        raise ValueError(f"optimizer config for {opt_type} must set 'lr'")
    if not paramwise_cfg:
        params: Any = model.parameters()
    else:
        params = build_param_groups(model, kwargs["lr"], kwargs.get("weight_decay"), paramwise_cfg, param_name_fn)
    try:
        return OPTIMIZERS[opt_type](params, **kwargs)
    except TypeError as err:
        raise TypeError(f"invalid arguments for optimizer {opt_type}: {sorted(kwargs)} ({err})") from err
