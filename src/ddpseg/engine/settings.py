"""The config sections the training loop reads (mmseg's names and defaults), checked up front so a typo fails
before any work starts."""

from __future__ import annotations

import pprint
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ddpseg.engine.checkpoint import to_jsonable

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


def _section(cfg: Mapping[str, Any], key: str, required: bool = False) -> Mapping[str, Any]:
    value = cfg.get(key)
    if value is None:
        if required:
            raise KeyError(f"config has no '{key}' section, which training needs")
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"config '{key}' must be a dict, got {type(value).__name__}")
    return value


def parse_settings(cfg: Mapping[str, Any], max_iters: Optional[int] = None) -> TrainSettings:
    """Read and check ``optimizer``, ``optimizer_config``, ``lr_config``, ``runner``, ``checkpoint_config``,
    ``evaluation``, ``log_config``, ``find_unused_parameters`` and ``cudnn_benchmark``."""
    runner = _section(cfg, "runner")
    if runner and runner.get("type", "IterBasedRunner") != "IterBasedRunner":
        raise ValueError(f"runner.type={runner.get('type')!r} is not supported; only 'IterBasedRunner'")
    if max_iters is None:
        max_iters = runner.get("max_iters", cfg.get("total_iters"))
    if not isinstance(max_iters, int) or max_iters <= 0:
        raise ValueError(f"runner.max_iters must be a positive integer, got {max_iters!r}")

    opt_cfg = _section(cfg, "optimizer_config")
    unknown = set(opt_cfg) - {"grad_clip"}
    if unknown:
        raise ValueError(f"optimizer_config has unsupported keys {sorted(unknown)}; only grad_clip is implemented")
    grad_clip = opt_cfg.get("grad_clip")
    if grad_clip is not None and (not isinstance(grad_clip, Mapping) or "max_norm" not in grad_clip):
        raise ValueError(f"optimizer_config.grad_clip must be dict(max_norm=..., norm_type=...), got {grad_clip!r}")

    ckpt = _section(cfg, "checkpoint_config")
    unknown = set(ckpt) - {"by_epoch", "interval", "max_keep_ckpts", "save_last", "meta", "save_optimizer",
                           "create_symlink"}
    if unknown:
        raise ValueError(f"checkpoint_config has unsupported keys {sorted(unknown)}")
    if ckpt.get("by_epoch", False):
        raise ValueError("checkpoint_config.by_epoch must be False: training is iteration-based")
    evaluation = _section(cfg, "evaluation")
    if evaluation.get("by_epoch", False):
        raise ValueError("evaluation.by_epoch must be False: training is iteration-based")
    rule = evaluation.get("rule")
    if rule not in (None, "greater", "less"):
        raise ValueError(f"evaluation.rule must be 'greater' or 'less', got {rule!r}")
    return TrainSettings(
        max_iters=max_iters,
        optimizer=_section(cfg, "optimizer", required=True),
        lr_config=_section(cfg, "lr_config", required=True),
        grad_clip=dict(grad_clip) if grad_clip is not None else None,
        checkpoint_interval=int(ckpt.get("interval", -1)),
        max_keep_ckpts=int(ckpt.get("max_keep_ckpts", -1)),
        save_last=bool(ckpt.get("save_last", True)),
        checkpoint_meta=dict(ckpt.get("meta") or {}),
        eval_interval=int(evaluation.get("interval", -1)),
        save_best=evaluation.get("save_best"),
        rule=rule,
        log_interval=int(_section(cfg, "log_config").get("interval", 50)),
        find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
        cudnn_benchmark=bool(cfg.get("cudnn_benchmark", False)),
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
