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

import inspect
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ddpseg.config import ConfigError, check_bool, check_keys, check_number


class OptimizerConfigError(ConfigError):
    """The config's ``optimizer`` section is invalid: unknown type or key, or a value of the wrong type."""


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
        raise OptimizerConfigError(f"optimizer.paramwise_cfg must be a dict, got {type(paramwise_cfg).__name__}")
    check_keys(paramwise_cfg, PARAMWISE_KEYS, "optimizer.paramwise_cfg", error=OptimizerConfigError)
    custom_keys = paramwise_cfg.get("custom_keys", {})
    if not isinstance(custom_keys, Mapping):
        raise OptimizerConfigError(
            f"optimizer.paramwise_cfg.custom_keys must be a dict, got {type(custom_keys).__name__}"
        )
    for key, rule in custom_keys.items():
        if not isinstance(rule, Mapping) or set(rule) - {"lr_mult", "decay_mult"}:
            raise OptimizerConfigError(
                f"optimizer.paramwise_cfg.custom_keys[{key!r}] must be a dict with lr_mult and/or decay_mult, got {rule!r}"
            )
        for mult, value in rule.items():
            check_number(value, f"optimizer.paramwise_cfg.custom_keys[{key!r}].{mult}", minimum=0,
                         error=OptimizerConfigError)
        if "decay_mult" in rule and base_wd is None:
            raise OptimizerConfigError(f"custom_keys[{key!r}] sets decay_mult but optimizer.weight_decay is not set")
    for key in ("bias_lr_mult", "bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult", "dcn_offset_lr_mult"):
        if key in paramwise_cfg:
            check_number(paramwise_cfg[key], f"optimizer.paramwise_cfg.{key}", minimum=0, error=OptimizerConfigError)
    for key in ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult"):
        if key in paramwise_cfg and base_wd is None:
            raise OptimizerConfigError(f"optimizer.paramwise_cfg.{key} is set but optimizer.weight_decay is not set")
    if "bypass_duplicate" in paramwise_cfg:
        check_bool(paramwise_cfg["bypass_duplicate"], "optimizer.paramwise_cfg.bypass_duplicate",
                   error=OptimizerConfigError)


def check_optimizer_config(cfg: Any) -> None:
    """Check the config's ``optimizer`` section without building anything (what :func:`build_optimizer` reads).

    ``type`` must be one of :data:`OPTIMIZERS`; the other keys are that optimizer's constructor arguments (as
    mmcv passes them on), ``paramwise_cfg`` and mmcv's ``constructor='DefaultOptimizerConstructor'``. Numbers
    and flags are checked by type, so ``lr='fast'`` or ``weight_decayy=1`` fail here, naming the key.

    Raises:
        OptimizerConfigError: naming the key, the value and what was expected.
    """
    if not isinstance(cfg, Mapping):
        raise OptimizerConfigError(f"optimizer must be a dict, got {type(cfg).__name__} ({cfg!r})")
    opt_type = cfg.get("type")
    if opt_type not in OPTIMIZERS:
        raise OptimizerConfigError(
            f"optimizer.type={opt_type!r} is not supported; expected one of {sorted(OPTIMIZERS)}"
        )
    constructor = cfg.get("constructor", "DefaultOptimizerConstructor")
    if constructor != "DefaultOptimizerConstructor":
        raise OptimizerConfigError(f"optimizer.constructor={constructor!r} is not supported; only mmcv's "
                                   "'DefaultOptimizerConstructor' (paramwise_cfg) is implemented")
    arguments = {name: p.default for name, p in inspect.signature(OPTIMIZERS[opt_type]).parameters.items()
                 if name != "params" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    check_keys({k: v for k, v in cfg.items() if k != "_delete_"}, {"type", "paramwise_cfg", "constructor", *arguments},
               f"optimizer ({opt_type})", error=OptimizerConfigError)
    if "lr" not in cfg:
        raise OptimizerConfigError(f"optimizer config for {opt_type} must set 'lr'")
    for name, value in cfg.items():
        if name not in arguments:
            continue
        default = arguments[name]
        if name == "betas":
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise OptimizerConfigError(f"optimizer.betas must be a pair of numbers in [0, 1), got {value!r}")
            for i, beta in enumerate(value):
                check_number(beta, f"optimizer.betas[{i}]", minimum=0, maximum=1, error=OptimizerConfigError)
        elif isinstance(default, bool):
            check_bool(value, f"optimizer.{name}", error=OptimizerConfigError)
        elif default is None and name in ("foreach", "fused"):
            if value is not None:
                check_bool(value, f"optimizer.{name}", error=OptimizerConfigError)
        elif isinstance(default, (int, float)):
            check_number(value, f"optimizer.{name}", minimum=0, error=OptimizerConfigError)
    paramwise_cfg = cfg.get("paramwise_cfg") or {}
    if paramwise_cfg:
        _validate_paramwise(paramwise_cfg, cfg.get("weight_decay"))


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
    check_optimizer_config(cfg)
    kwargs = dict(cfg)
    opt_type = kwargs.pop("type")
    paramwise_cfg = kwargs.pop("paramwise_cfg", None) or {}
    kwargs.pop("_delete_", None)
    kwargs.pop("constructor", None)
    if hasattr(model, "module"):  # DistributedDataParallel / DataParallel: group names come from the inner model
        model = model.module
    if not paramwise_cfg:
        params: Any = model.parameters()
    else:
        params = build_param_groups(model, kwargs["lr"], kwargs.get("weight_decay"), paramwise_cfg, param_name_fn)
    try:
        return OPTIMIZERS[opt_type](params, **kwargs)
    except TypeError as err:
        raise TypeError(f"invalid arguments for optimizer {opt_type}: {sorted(kwargs)} ({err})") from err
