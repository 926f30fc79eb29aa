"""parse_settings: every section the training loop reads is checked by key and type before any work."""

import pytest

from engine_toys import toy_config
from ddpseg.config import ConfigError
from ddpseg.engine.settings import SettingsError, parse_settings


def with_option(cfg, dotted, value):
    """``cfg`` with one ``--cfg-options``-style key set (``runner.max_iter``)."""
    section, key = dotted.split(".")
    cfg[section] = {**(cfg.get(section) or {}), key: value}
    return cfg


def test_the_toy_recipe_parses_to_the_values_it_sets():
    settings = parse_settings(toy_config(max_iters=8))
    assert (settings.max_iters, settings.checkpoint_interval, settings.eval_interval, settings.log_interval) == (8, 4, 4, 2)
    assert settings.save_best == "mIoU" and settings.grad_clip == {"max_norm": 1.0, "norm_type": 2}
    assert settings.find_unused_parameters is True and settings.cudnn_benchmark is False


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("runner.max_iter", 2, r"unknown key 'max_iter' \(did you mean 'max_iters'\?\) in runner"),
        ("runner.max_epochs", 2, r"runner\.max_epochs is not supported: training is iteration-based"),
        ("runner.max_iters", "2", r"runner\.max_iters must be an integer >= 1, got '2'"),
        ("runner.max_iters", 2.5, r"runner\.max_iters must be an integer >= 1, got 2\.5"),
        ("log_config.intervall", 1, r"unknown key 'intervall' \(did you mean 'interval'\?\) in log_config"),
        ("log_config.interval", 0, r"log_config\.interval must be an integer >= 1, got 0"),
        ("log_config.hooks", "TextLoggerHook", r"log_config\.hooks must be a list of dict\(type=\.\.\.\)"),
        ("checkpoint_config.interval", "x", r"checkpoint_config\.interval must be an integer, got 'x'"),
        ("checkpoint_config.intervl", 2, r"unknown key 'intervl' \(did you mean 'interval'\?\) in checkpoint_config"),
        ("checkpoint_config.out_dir", "/x", r"checkpoint_config has unsupported keys \['out_dir'\]"),
        ("checkpoint_config.max_keep_ckpts", "2", r"checkpoint_config\.max_keep_ckpts must be an integer"),
        ("checkpoint_config.save_last", "no", r"checkpoint_config\.save_last must be True or False, got 'no'"),
        ("evaluation.interval", "often", r"evaluation\.interval must be an integer, got 'often'"),
        ("evaluation.save_best", ["mIoU"], r"evaluation\.save_best must be a metric name"),
        ("optimizer_config.grad_clp", None, r"unknown key 'grad_clp' \(did you mean 'grad_clip'\?\) in optimizer_config"),
        ("optimizer_config.type", "Fp16OptimizerHook", r"optimizer_config has unsupported keys \['type'\]"),
        ("optimizer.weight_decayy", 1, r"unknown key 'weight_decayy' \(did you mean 'weight_decay'\?\) in optimizer"),
        ("optimizer.lr", "fast", r"optimizer\.lr must be a number >= 0, got 'fast'"),
    ],
)
def test_a_misspelt_key_or_wrong_typed_value_is_named(option, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(with_option(toy_config(), option, value))


def test_grad_clip_and_top_level_flags_are_checked_by_type():
    cfg = toy_config(optimizer_config=dict(grad_clip=dict(max_norm="1", norm_type=2)))
    with pytest.raises(SettingsError, match=r"grad_clip\.max_norm must be a number >= 0, got '1'"):
        parse_settings(cfg)
    with pytest.raises(SettingsError, match=r"unknown key 'max_nrom'"):
        parse_settings(toy_config(optimizer_config=dict(grad_clip=dict(max_nrom=1, max_norm=1))))
    assert parse_settings(toy_config(optimizer_config=dict(grad_clip=dict(max_norm=1, norm_type="inf")))).grad_clip
    with pytest.raises(SettingsError, match=r"find_unused_parameters must be True or False, got 'false'"):
        parse_settings(toy_config(find_unused_parameters="false"))


def test_missing_and_non_dict_sections_are_config_errors():
    cfg = toy_config()
    del cfg["optimizer"]
    with pytest.raises(SettingsError, match="no 'optimizer' section"):
        parse_settings(cfg)
    with pytest.raises(SettingsError, match=r"config 'runner' must be a dict, got int \(5\)"):
        parse_settings(toy_config(runner=5))
