"""check_train_config: what training would silently ignore, or fail on only later, is refused before any work."""

from pathlib import Path

import pytest

from ddpseg.config import Config, ConfigError
from ddpseg.engine.runner import CONFIG_VARIABLES, KNOWN_TOP_LEVEL, check_train_config

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs" / "quickstart" / "ddp_convnext_mini_synthetic.py"
TRAIN_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts)


def config(**options):
    """The quickstart config with ``--cfg-options``-style overrides (``**{'runner.max_iters': 2}``)."""
    cfg = Config.fromfile(CFG)
    cfg.merge_from_dict(options)
    return cfg


def refused(message, **options):
    with pytest.raises(ConfigError, match=message) as info:
        check_train_config(config(**options))
    assert str(CFG) in str(info.value)  # every message names the file
    return str(info.value)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_passes(path):
    check_train_config(Config.fromfile(path))


def test_free_variables_of_the_shipped_configs_are_not_taken_for_misspelt_sections():
    names = {key for path in TRAIN_CONFIGS for key in Config.fromfile(path)}
    assert names - set(KNOWN_TOP_LEVEL) <= set(CONFIG_VARIABLES)


@pytest.mark.parametrize(
    "option, section",
    [("runer.max_iters", "runner"), ("evalution.interval", "evaluation"), ("optimiser.lr", "optimizer"),
     ("checkpoint_cfg.interval", "checkpoint_config"), ("log_confg.interval", "log_config")],
)
def test_a_misspelt_top_level_section_is_an_error_even_when_the_base_defines_the_real_one(option, section):
    message = refused(rf"unknown top-level key '{option.split('.')[0]}' \(did you mean '{section}'\?\)", **{option: 1})
    assert "would be used instead" in message


def test_a_misspelt_section_the_base_lacks_is_an_error_too(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(f"_base_ = [{str(CFG)!r}]\nspeedup = dict(amp='bf16')\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key 'speedup' \(did you mean 'speedups'\?\).*"
                                          r"no 'speedups' would be set"):
        check_train_config(Config.fromfile(path))


def test_unrelated_free_variables_still_load(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(f"_base_ = [{str(CFG)!r}]\nmy_scale = (512, 1024)\ncheckpoint_file = 'x.pth'\nnorm_cfg = None\n")
    check_train_config(Config.fromfile(path))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"runner.max_iter": 2}, r"unknown key 'max_iter' \(did you mean 'max_iters'\?\) in runner"),
        ({"log_config.intervall": 2}, r"unknown key 'intervall' \(did you mean 'interval'\?\) in log_config"),
        ({"checkpoint_config.interval": "x"}, r"checkpoint_config\.interval must be an integer, got 'x'"),
        ({"optimizer.weight_decayy": 1}, r"unknown key 'weight_decayy' \(did you mean 'weight_decay'\?\) in optimizer"),
        ({"optimizer.lr": "fast"}, r"optimizer\.lr must be a number >= 0, got 'fast'"),
        ({"lr_config.warmup_iter": 3}, r"lr_config has unknown keys \['warmup_iter'\]"),
        ({"data.samples_per_gpu": "two"}, r"data\.samples_per_gpu must be an integer >= 1, got 'two'"),
        ({"data.workers_per_gpu": 1.5}, r"data\.workers_per_gpu must be an integer >= 0, got 1\.5"),
        ({"data.train_dataloader": {"samples_per_gpu": 0}}, r"data\.train_dataloader\.samples_per_gpu must be an integer >= 1"),
        ({"data.train_dataloader": {"drop_last": "no"}}, r"data\.train_dataloader\.drop_last must be True or False"),
        ({"data.val_dataloader": {"workers_per_gpu": "2"}}, r"data\.val_dataloader\.workers_per_gpu must be an integer"),
        ({"evaluation.metric": 5}, r"evaluation\.metric must be a metric name or a list of them"),
        ({"model.timesteps": 2.5}, r"model\.timesteps must be an integer >= 1, got 2\.5"),
        ({"model.decode_head.num_classes": 0}, r"model\.decode_head\.num_classes must be an integer >= 1, got 0"),
        ({"model.test_cfg.mod": "slide"}, r"unknown key 'mod' \(did you mean 'mode'\?\) in model\.test_cfg"),
    ],
)
def test_misspelt_keys_and_wrong_types_in_sections_are_named(options, message):
    refused(message, **options)


def test_the_legacy_fp16_section_takes_mmcvs_loss_scale_and_nothing_else():
    for loss_scale in (512.0, "dynamic", dict(init_scale=1024.0, growth_interval=100)):
        check_train_config(config(fp16=dict(loss_scale=loss_scale)))
    check_train_config(config(fp16=dict()))
    refused(r"fp16\.loss_scale must be 'dynamic', a number > 0 \(a static scale\) or a dict", **{"fp16.loss_scale": "static"})
    refused(r"unknown key 'init_scal' \(did you mean 'init_scale'\?\) in fp16\.loss_scale",
            **{"fp16.loss_scale": dict(init_scal=2.0)})
    refused(r"unknown key 'coalesce' in fp16", fp16=dict(loss_scale=512.0, coalesce=True))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"evaluation.save_best": "mDice"},
         r"save_best='mDice' is not a result of evaluation\.metric='mIoU'; choose from 'auto', 'aAcc', 'mIoU', 'mAcc'"),
        ({"evaluation.save_best": "mIOU"}, r"save_best='mIOU' \(did you mean 'mIoU'\?\) is not a result"),
        ({"evaluation.metric": ["mIoU", "mFscore"], "evaluation.save_best": "mDice"}, r"'mFscore', 'mPrecision', 'mRecall'"),
        ({"evaluation.metric": "mDice", "evaluation.save_best": "mDice"}, r"set evaluation\.rule='greater' or 'less'"),
        ({"evaluation.save_best": "IoU.road"}, r"cannot tell whether a larger 'IoU\.road' is better"),
        ({"evaluation.save_best": "IoU.roads", "evaluation.rule": "greater"}, r"the validation set has no class 'roads'"),
    ],
)
def test_save_best_must_be_a_key_the_evaluation_returns(options, message):
    refused(message, **options)


@pytest.mark.parametrize(
    "options",
    [{"evaluation.save_best": "auto"}, {"evaluation.save_best": "mAcc"}, {"evaluation.save_best": None},
     {"evaluation.metric": "mDice", "evaluation.save_best": "mDice", "evaluation.rule": "greater"},
     {"evaluation.save_best": "IoU.road", "evaluation.rule": "greater"}],
)
def test_valid_save_best_choices_pass(options):
    check_train_config(config(**options))
