"""Iteration-based poly learning-rate schedule with warm-up (mmcv 1.x ``PolyLrUpdaterHook``, ``by_epoch=False``).

Timing, as in mmcv: before the step of iteration ``i`` (0-based: ``i`` steps are already done) every param group
gets ``lr_i``; the logged lr of that iteration is ``lr_i``.

    regular_i = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr
    linear   : k = (1 - i / warmup_iters) * (1 - warmup_ratio);  lr_i = regular_i * (1 - k)
    constant : lr_i = regular_i * warmup_ratio
    exp      : lr_i = regular_i * warmup_ratio ** (1 - i / warmup_iters)
    (warm-up only while i < warmup_iters; afterwards lr_i = regular_i)

``base_lr`` is per param group: the group's ``initial_lr`` (its lr at the start of training, so ``lr_mult`` is
included); a resumed optimizer brings its stored ``initial_lr`` back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ddpseg.config import check_number

WARMUP_TYPES = ("constant", "linear", "exp")
LR_CONFIG_KEYS = frozenset(
    {"policy", "power", "min_lr", "by_epoch", "warmup", "warmup_iters", "warmup_ratio", "warmup_by_epoch", "_delete_"}
)


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 1.0, min_lr: float = 0.0) -> float:
    """The regular (un-warmed) poly lr before the step of 0-based ``iteration``."""
    coeff = (1 - iteration / max_iters) ** power
    return (base_lr - min_lr) * coeff + min_lr


def warmup_factor(iteration: int, warmup: Optional[str], warmup_iters: int, warmup_ratio: float) -> float:
    """Factor applied to the regular lr at 0-based ``iteration`` (1.0 once warm-up is over or without warm-up)."""
    if warmup is None or iteration >= warmup_iters:
        return 1.0
    if warmup == "constant":
        return warmup_ratio
    if warmup == "linear":
        k = (1 - iteration / warmup_iters) * (1 - warmup_ratio)
        return 1 - k
    if warmup == "exp":
        return warmup_ratio ** (1 - iteration / warmup_iters)
    raise ValueError(f"warmup={warmup!r} is not supported; expected one of {WARMUP_TYPES} or None")


def initial_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each group's ``initial_lr``, recording the current lr as such where missing (as mmcv's ``before_run``)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return [group["initial_lr"] for group in optimizer.param_groups]


class PolyLrSchedule:
    """Poly decay over ``max_iters`` iterations with optional warm-up; stateless apart from ``base_lrs``.

    Call :meth:`apply` before every optimizer step with the 0-based iteration index.
    """

    def __init__(
        self,
        base_lrs: Sequence[float],
        max_iters: int,
        *,
        power: float = 1.0,
        min_lr: float = 0.0,
        warmup: Optional[str] = None,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.1,
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"max_iters must be positive, got {max_iters}")
        if warmup is not None:
            if warmup not in WARMUP_TYPES:
                raise ValueError(f"lr_config.warmup={warmup!r} is not supported; expected one of {WARMUP_TYPES}")
            if not (isinstance(warmup_iters, int) and warmup_iters > 0):
                raise ValueError(f"lr_config.warmup_iters must be a positive integer, got {warmup_iters!r}")
            if not 0 < warmup_ratio <= 1.0:
                raise ValueError(f"lr_config.warmup_ratio must be in (0, 1], got {warmup_ratio!r}")
        self.base_lrs = [float(lr) for lr in base_lrs]
        self.max_iters = max_iters
        self.power = power
        self.min_lr = min_lr
        self.warmup = warmup
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.last_iter: Optional[int] = None

    @classmethod
    def from_config(cls, lr_config: Mapping[str, Any], base_lrs: Sequence[float], max_iters: int) -> "PolyLrSchedule":
        """Build from the config's ``lr_config`` section (``policy='poly'``, iteration-based only)."""
        if not isinstance(lr_config, Mapping):
            raise TypeError(f"lr_config must be a dict, got {type(lr_config).__name__}")
        unknown = set(lr_config) - LR_CONFIG_KEYS
        if unknown:
            raise ValueError(f"lr_config has unknown keys {sorted(unknown)}; known: {sorted(LR_CONFIG_KEYS)}")
        policy = lr_config.get("policy")
        if not isinstance(policy, str) or policy.lower() != "poly":
            raise ValueError(f"lr_config.policy={policy!r} is not supported; only 'poly' is implemented")
        if lr_config.get("by_epoch", False) or lr_config.get("warmup_by_epoch", False):
            raise ValueError("lr_config.by_epoch / warmup_by_epoch must be False: training is iteration-based")
        for key in ("power", "min_lr"):
            if key in lr_config:
                check_number(lr_config[key], f"lr_config.{key}", minimum=0)
        return cls(
            base_lrs,
            max_iters,
            power=lr_config.get("power", 1.0),
            min_lr=lr_config.get("min_lr", 0.0),
            warmup=lr_config.get("warmup"),
            warmup_iters=lr_config.get("warmup_iters", 0),
            warmup_ratio=lr_config.get("warmup_ratio", 0.1),
        )

    def regular_lrs(self, iteration: int) -> list[float]:
        return [poly_lr(lr, iteration, self.max_iters, self.power, self.min_lr) for lr in self.base_lrs]

    def lrs(self, iteration: int) -> list[float]:
        """Per-group lr used by the step of 0-based ``iteration``."""
        factor = warmup_factor(iteration, self.warmup, self.warmup_iters, self.warmup_ratio)
        return [lr * factor for lr in self.regular_lrs(iteration)]

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> list[float]:
        """Set every group's lr for the step of 0-based ``iteration``; returns the lrs."""
        if len(optimizer.param_groups) != len(self.base_lrs):
            raise ValueError(
                f"optimizer has {len(optimizer.param_groups)} param groups, the schedule {len(self.base_lrs)}"
            )
        lrs = self.lrs(iteration)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        self.last_iter = iteration
        return lrs

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lrs": list(self.base_lrs),
            "max_iters": self.max_iters,
            "power": self.power,
            "min_lr": self.min_lr,
            "warmup": self.warmup,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
            "last_iter": self.last_iter,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``base_lrs`` and ``last_iter``; the shape of the schedule stays as configured now (so a resumed
        run may extend ``max_iters``, as with mmcv)."""
        base_lrs = list(state["base_lrs"])
        if len(base_lrs) != len(self.base_lrs):
            raise ValueError(f"schedule state has {len(base_lrs)} param groups, expected {len(self.base_lrs)}")
        self.base_lrs = [float(lr) for lr in base_lrs]
        self.last_iter = state.get("last_iter")
