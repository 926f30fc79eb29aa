import pytest
import torch
from torch import nn

from ddpseg.engine.lr_schedule import PolyLrSchedule, initial_lrs

# The DDP configs' schedule: AdamW 6e-5, poly power 1, linear warm-up over 1500 iterations from 1e-6, 160k iterations.
DDP_LR_CONFIG = dict(policy="poly", warmup="linear", warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                     by_epoch=False)


def ddp_schedule(base_lrs=(6e-5,)) -> PolyLrSchedule:
    return PolyLrSchedule.from_config(DDP_LR_CONFIG, list(base_lrs), 160000)


@pytest.mark.parametrize(
    "iteration, expected",
    [
        # regular = 6e-5 * (1 - i/160000); k = (1 - i/1500) * (1 - 1e-6); lr = regular * (1 - k)
        (0, 6e-5 * 1e-6),
        (750, 6e-5 * (1 - 750 / 160000) * (1 - 0.5 * (1 - 1e-6))),
        (1499, 6e-5 * (1 - 1499 / 160000) * (1 - (1 / 1500) * (1 - 1e-6))),
        (1500, 6e-5 * (1 - 1500 / 160000)),  # warm-up over: the regular lr
        (80000, 3e-5),
        (159999, 6e-5 / 160000),
    ],
)
def test_ddp_poly_schedule_with_linear_warmup_matches_hand_calculation(iteration, expected):
    assert ddp_schedule().lrs(iteration)[0] == pytest.approx(expected, rel=1e-12)


def test_poly_power_and_min_lr_of_the_sgd_baseline_configs():
    schedule = PolyLrSchedule.from_config(dict(policy="poly", power=0.9, min_lr=1e-4, by_epoch=False), [0.01], 80000)
    assert schedule.lrs(0)[0] == pytest.approx(0.01)
    assert schedule.lrs(40000)[0] == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert schedule.lrs(80000)[0] == pytest.approx(1e-4)


def test_constant_and_exp_warmup_scale_the_regular_lr():
    constant = PolyLrSchedule([1.0], 100, warmup="constant", warmup_iters=10, warmup_ratio=0.1)
    assert constant.lrs(5)[0] == pytest.approx(0.1 * (1 - 5 / 100))
    assert constant.lrs(10)[0] == pytest.approx(1 - 10 / 100)
    exp = PolyLrSchedule([1.0], 100, warmup="exp", warmup_iters=10, warmup_ratio=0.01)
    assert exp.lrs(0)[0] == pytest.approx(0.01)
    assert exp.lrs(5)[0] == pytest.approx((1 - 5 / 100) * 0.01**0.5)


def test_apply_uses_each_groups_initial_lr_so_lr_mult_survives_the_schedule():
    a, b = nn.Linear(1, 1), nn.Linear(1, 1)
    optimizer = torch.optim.SGD([{"params": a.parameters(), "lr": 6e-5}, {"params": b.parameters(), "lr": 6e-4}], lr=6e-5)
    schedule = ddp_schedule(initial_lrs(optimizer))
    lrs = schedule.apply(optimizer, 2000)
    assert [g["lr"] for g in optimizer.param_groups] == lrs
    assert lrs[1] == pytest.approx(10 * lrs[0])
    assert [g["initial_lr"] for g in optimizer.param_groups] == [6e-5, 6e-4]


def test_state_dict_round_trip_restores_base_lrs():
    schedule = ddp_schedule([1e-3, 2e-3])
    schedule.apply(torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(2)], lr=1.0), 7)
    restored = ddp_schedule([0.0, 0.0])
    restored.load_state_dict(schedule.state_dict())
    assert restored.lrs(123) == schedule.lrs(123)
    assert restored.last_iter == 7


@pytest.mark.parametrize(
    "lr_config, message",
    [
        (dict(policy="step", step=[10]), "policy"),
        (dict(policy="poly", by_epoch=True), "by_epoch"),
        (dict(policy="poly", power="x"), r"lr_config\.power must be a number >= 0, got 'x'"),
        (dict(policy="poly", min_lr="0"), r"lr_config\.min_lr must be a number >= 0, got '0'"),
        (dict(policy="poly", warmup="cosine", warmup_iters=5), "warmup"),
        (dict(policy="poly", warmup="linear", warmup_iters=0), "warmup_iters"),
        (dict(policy="poly", warmup_ratios=0.1), "unknown keys"),
    ],
)
def test_unsupported_lr_configs_are_rejected_by_name(lr_config, message):
    with pytest.raises(ValueError, match=message):
        PolyLrSchedule.from_config(lr_config, [1.0], 100)
