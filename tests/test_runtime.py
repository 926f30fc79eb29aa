"""``ddpseg.runtime.speedup_settings``: the config's ``speedups`` section and the flags on top of it."""

from __future__ import annotations

import pytest

from ddpseg.config import Config, ConfigError
from ddpseg.runtime import Speedups, speedup_settings


def test_defaults_are_float32_eager_nchw():
    assert speedup_settings(None) == Speedups(amp=None, channels_last=False, compile=False)
    assert speedup_settings(Config(dict(model=dict()))) == Speedups()


def test_config_section_applies_and_given_flags_win():
    cfg = Config(dict(speedups=dict(amp="bf16", channels_last=True)))
    assert speedup_settings(cfg) == Speedups(amp="bf16", channels_last=True, compile=False)
    assert speedup_settings(cfg, amp="fp16", compile=True) == Speedups(amp="fp16", channels_last=True, compile=True)


def test_legacy_fp16_section_means_fp16_unless_amp_is_set():
    assert speedup_settings(Config(dict(fp16=dict(loss_scale=512.0)))).amp == "fp16"
    assert speedup_settings(Config(dict(fp16=dict(loss_scale=512.0), speedups=dict(amp="bf16")))).amp == "bf16"
    assert speedup_settings(Config(dict(fp16=dict(loss_scale=512.0))), amp="bf16").amp == "bf16"


@pytest.mark.parametrize(
    "section, message",
    [
        (dict(chanels_last=True), "unknown key(s) ['chanels_last'] in speedups"),
        (dict(channels_last="yes"), "speedups.channels_last must be True or False, got 'yes'"),
        (dict(compile=1), "speedups.compile must be True or False, got 1"),
        (dict(amp="fp8"), "speedups.amp must be None or one of ['bf16', 'fp16'], got 'fp8'"),
        ("bf16", "speedups must be a dict"),
    ],
)
def test_bad_sections_name_the_key_and_what_was_expected(section, message):
    with pytest.raises(ConfigError) as err:
        speedup_settings(Config(dict(speedups=section)))
    assert message in str(err.value)


def test_bad_flag_value_is_refused():
    with pytest.raises(ValueError, match="fp8"):
        speedup_settings(None, amp="fp8")
