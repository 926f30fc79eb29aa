"""The config sections the training loop reads (mmseg's names and defaults), checked up front so a typo fails
before any work starts."""

from __future__ import annotations

import pprint
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ddpseg.config import ConfigError, check_bool, check_int, check_keys, check_number
from ddpseg.engine.checkpoint import to_jsonable
from ddpseg.engine.optimizer import check_optimizer_config

# mmseg's EvalHook: these indicators are better when larger, ``loss`` ones when smaller.
GREATER_KEYS = ("mIoU", "mAcc", "aAcc")
LESS_KEYS = ("loss",)


@dataclass
class TrainSettings:
    """The config sections the loop reads, validated."""

    max_iters: int
    optimizer: Mapping[str, Any]
    lr_config: Mapping[str, Any]
    grad_clip: Optional[dict[str, Any]] = None
    checkpoint_interval: int = -1
    max_keep_ckpts: int = -1
    save_last: bool = True
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)
    eval_interval: int = -1
    save_best: Optional[str] = None
    rule: Optional[str] = None
    log_interval: int = 50
    find_unused_parameters: bool = False
    cudnn_benchmark: bool = False


class SettingsError(ConfigError):
    """A training section (``runner``, ``optimizer_config``, ``checkpoint_config``, ``evaluation``, ``log_config``,
    ...) is missing, misspelt or holds a value of the wrong type."""


# The keys mmcv 1.x reads from each section; those it reads but ddpseg does not implement are refused by name.
RUNNER_KEYS = ("type", "max_iters")
OPTIMIZER_CONFIG_KEYS = ("grad_clip",)
OPTIMIZER_CONFIG_UNSUPPORTED = ("type", "detect_anomalous_params", "cumulative_iters", "loss_scale", "distributed")
CHECKPOINT_KEYS = ("by_epoch", "interval", "max_keep_ckpts", "save_last", "meta", "save_optimizer", "create_symlink")
CHECKPOINT_UNSUPPORTED = ("out_dir", "filename_tmpl", "file_client_args", "sync_buffer")
LOG_CONFIG_KEYS = ("interval", "hooks")


def _section(cfg: Mapping[str, Any], key: str, required: bool = False) -> Mapping[str, Any]:
    value = cfg.get(key)
    if value is None:
        if required:
            raise SettingsError(f"config has no '{key}' section, which training needs")
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"config '{key}' must be a dict, got {type(value).__name__} ({value!r})")
    return value


def _check_section_keys(section: Mapping[str, Any], allowed: tuple[str, ...], where: str,
                        unsupported: tuple[str, ...] = ()) -> None:
    """Keys mmcv knows but ddpseg does not implement are named as unsupported; any other unknown key gets
    :func:`~ddpseg.config.check_keys`' message (closest allowed key, all allowed keys)."""
    refused = [key for key in section if key in unsupported]
    if refused:
        raise SettingsError(f"{where} has unsupported keys {refused}; ddpseg implements only "
                            f"{', '.join(allowed)}")
    check_keys(section, allowed, where, error=SettingsError)


def parse_settings(cfg: Mapping[str, Any], max_iters: Optional[int] = None) -> TrainSettings:
    """Read and check ``optimizer`` (:func:`~ddpseg.engine.optimizer.check_optimizer_config`), ``optimizer_config``,
    ``lr_config``, ``runner``, ``checkpoint_config``, ``evaluation``, ``log_config``, ``find_unused_parameters`` and
    ``cudnn_benchmark``.

    Raises:
        SettingsError: a missing or misspelt section key, an unsupported setting or a value of the wrong type;
            the message names the key.
    """
    runner = _section(cfg, "runner")
    if "max_epochs" in runner:
        raise SettingsError("runner.max_epochs is not supported: training is iteration-based "
                            "(runner=dict(type='IterBasedRunner', max_iters=N))")
    _check_section_keys(runner, RUNNER_KEYS, "runner")
    if runner and runner.get("type", "IterBasedRunner") != "IterBasedRunner":
        raise SettingsError(f"runner.type={runner.get('type')!r} is not supported; only 'IterBasedRunner'")
    if max_iters is None:
        max_iters = check_int(runner.get("max_iters", cfg.get("total_iters")), "runner.max_iters", minimum=1,
                              error=SettingsError)
    else:
        max_iters = check_int(max_iters, "max_iters", minimum=1, error=SettingsError)

    opt_cfg = _section(cfg, "optimizer_config")
    _check_section_keys(opt_cfg, OPTIMIZER_CONFIG_KEYS, "optimizer_config", OPTIMIZER_CONFIG_UNSUPPORTED)
    grad_clip = opt_cfg.get("grad_clip")
    if grad_clip is not None and (not isinstance(grad_clip, Mapping) or "max_norm" not in grad_clip):
        raise SettingsError(f"optimizer_config.grad_clip must be dict(max_norm=..., norm_type=...), got {grad_clip!r}")
    if grad_clip is not None:
        check_keys(grad_clip, ("max_norm", "norm_type", "error_if_nonfinite", "foreach"), "optimizer_config.grad_clip",
                   error=SettingsError)
        check_number(grad_clip["max_norm"], "optimizer_config.grad_clip.max_norm", minimum=0, error=SettingsError)
        if grad_clip.get("norm_type", "inf") != "inf":  # torch also takes the string 'inf'
            check_number(grad_clip["norm_type"], "optimizer_config.grad_clip.norm_type", error=SettingsError)

    ckpt = _section(cfg, "checkpoint_config")
    _check_section_keys(ckpt, CHECKPOINT_KEYS, "checkpoint_config", CHECKPOINT_UNSUPPORTED)
    if check_bool(ckpt.get("by_epoch", False), "checkpoint_config.by_epoch", error=SettingsError):
        raise SettingsError("checkpoint_config.by_epoch must be False: training is iteration-based")
    for key in ("save_optimizer", "create_symlink"):
        check_bool(ckpt.get(key, True), f"checkpoint_config.{key}", error=SettingsError)
    meta = ckpt.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise SettingsError(f"checkpoint_config.meta must be a dict, got {meta!r}")

    evaluation = _section(cfg, "evaluation")
    if check_bool(evaluation.get("by_epoch", False), "evaluation.by_epoch", error=SettingsError):
        raise SettingsError("evaluation.by_epoch must be False: training is iteration-based")
    rule = evaluation.get("rule")
    if rule not in (None, "greater", "less"):
        raise SettingsError(f"evaluation.rule must be 'greater' or 'less', got {rule!r}")
    save_best = evaluation.get("save_best")
    if save_best is not None and not isinstance(save_best, str):
        raise SettingsError(f"evaluation.save_best must be a metric name (e.g. 'mIoU') or 'auto', got {save_best!r}")

    optimizer = _section(cfg, "optimizer", required=True)
    check_optimizer_config(optimizer)

    log_config = _section(cfg, "log_config")
    check_keys(log_config, LOG_CONFIG_KEYS, "log_config", error=SettingsError)
    hooks = log_config.get("hooks", [])
    if not isinstance(hooks, (list, tuple)) or not all(isinstance(h, Mapping) and "type" in h for h in hooks):
        raise SettingsError(f"log_config.hooks must be a list of dict(type=...), got {hooks!r}")
    return TrainSettings(
        max_iters=max_iters,
        optimizer=optimizer,
        lr_config=_section(cfg, "lr_config", required=True),
        grad_clip=dict(grad_clip) if grad_clip is not None else None,
        checkpoint_interval=check_int(ckpt.get("interval", -1), "checkpoint_config.interval", error=SettingsError),
        max_keep_ckpts=check_int(ckpt.get("max_keep_ckpts", -1), "checkpoint_config.max_keep_ckpts",
                                 error=SettingsError),
        save_last=check_bool(ckpt.get("save_last", True), "checkpoint_config.save_last", error=SettingsError),
        checkpoint_meta=dict(meta),
        eval_interval=check_int(evaluation.get("interval", -1), "evaluation.interval", error=SettingsError),
        save_best=save_best,
        rule=rule,
        log_interval=check_int(log_config.get("interval", 50), "log_config.interval", minimum=1, error=SettingsError),
        find_unused_parameters=check_bool(cfg.get("find_unused_parameters", False), "find_unused_parameters",
                                          error=SettingsError),
        cudnn_benchmark=check_bool(cfg.get("cudnn_benchmark", False), "cudnn_benchmark", error=SettingsError),
    )


def config_text(cfg: Mapping[str, Any]) -> str:
    for attr in ("pretty_text", "text"):
        text = getattr(cfg, attr, None)
        if isinstance(text, str):
            return text
    return pprint.pformat(dict(cfg), sort_dicts=False)


def model_section(cfg: Mapping[str, Any]) -> Any:
    section = cfg.get("model")
    try:
        return to_jsonable(section, "model")
    except TypeError:
        return repr(section)


def best_rule(key: str, rule: Optional[str]) -> str:
    """``'greater'`` or ``'less'`` for indicator ``key`` (mmseg's EvalHook inference unless ``rule`` is given)."""
    if rule is not None:
        return rule
    lowered = key.lower()
    for candidates, result in ((GREATER_KEYS, "greater"), (LESS_KEYS, "less")):
        if lowered in (k.lower() for k in candidates):
            return result
    for candidates, result in ((GREATER_KEYS, "greater"), (LESS_KEYS, "less")):
        if any(k.lower() in lowered for k in candidates):
            return result
    raise ValueError(f"cannot tell whether a larger '{key}' is better; set evaluation.rule='greater' or 'less'")
