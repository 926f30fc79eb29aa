"""``ddpseg.runtime``: the config's ``speedups`` section and the flags on top of it; ``parse_device``."""

from __future__ import annotations

import pytest
import torch

from ddpseg.config import Config, ConfigError
from ddpseg.runtime import DeviceError, Speedups, default_device, parse_device, speedup_settings


def test_defaults_are_float32_eager_nchw():
    assert speedup_settings(None) == Speedups(amp=None, channels_last=False, compile=False)
    assert speedup_settings(Config(dict(model=dict()))) == Speedups()


def test_config_section_applies_and_given_flags_win():
    cfg = Config(dict(speedups=dict(amp="bf16", channels_last=True)))
    assert speedup_settings(cfg) == Speedups(amp="bf16", channels_last=True, compile=False)
    assert speedup_settings(cfg, amp="fp16", compile=True) == Speedups(amp="fp16", channels_last=True, compile=True)


def test_tf32_comes_from_the_config_unless_a_flag_is_given():
    assert speedup_settings(None).tf32 is None  # PyTorch's defaults
    cfg = Config(dict(speedups=dict(tf32=True)))
    assert speedup_settings(cfg).tf32 is True
    assert speedup_settings(cfg, tf32=False).tf32 is False  # --no-tf32 wins
    assert speedup_settings(None, tf32=True).tf32 is True


def test_apply_tf32_sets_both_cuda_switches_and_leaves_them_for_none_or_the_cpu():
    from ddpseg.runtime import apply_tf32, describe_tf32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # PyTorch's defaults
        apply_tf32(None, "cuda")
        apply_tf32(True, "cpu")  # TF32 is a CUDA setting: a CPU run changes nothing process-wide
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
        assert describe_tf32() == "matrix products float32, cuDNN convolutions TF32"
        apply_tf32(True, torch.device("cuda", 0))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        apply_tf32(False, "cuda:0")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_flags_parse_in_every_command_that_runs_the_model():
    from ddpseg.cli import build_parser

    parser = build_parser()
    base = {"train": ["cfg.py"], "test": ["cfg.py", "ck.pth"], "demo": ["img.png", "cfg.py", "ck.pth"],
            "benchmark": ["cfg.py"]}
    for command, positional in base.items():
        assert parser.parse_args([command, *positional]).tf32 is None
        assert parser.parse_args([command, *positional, "--tf32"]).tf32 is True
        assert parser.parse_args([command, *positional, "--no-tf32"]).tf32 is False


def test_legacy_fp16_section_means_fp16_unless_amp_is_set():
    assert speedup_settings(Config(dict(fp16=dict(loss_scale=512.0)))).amp == "fp16"
    assert speedup_settings(Config(dict(fp16=dict(loss_scale=512.0), speedups=dict(amp="bf16")))).amp == "bf16"
    assert speedup_settings(Config(dict(fp16=dict(loss_scale=512.0))), amp="bf16").amp == "bf16"
    # mmseg's fp16 configs carry an empty placeholder; the original's test.py checks it against None
    assert speedup_settings(Config(dict(fp16=dict()))).amp == "fp16"
    assert speedup_settings(Config(dict(fp16=None))).amp is None


@pytest.mark.parametrize(
    "section, message",
    [
        (dict(chanels_last=True), "unknown key(s) ['chanels_last'] in speedups"),
        (dict(channels_last="yes"), "speedups.channels_last must be True or False, got 'yes'"),
        (dict(compile=1), "speedups.compile must be True or False, got 1"),
        (dict(amp="fp8"), "speedups.amp must be None or one of ['bf16', 'fp16'], got 'fp8'"),
        (dict(tf32="on"), "speedups.tf32 must be None, True or False, got 'on'"),
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


# --- parse_device: the one check behind every --device and init_model(device=...) -------------------------------
@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu")])
def test_parse_device_accepts_the_cpu(device):
    assert parse_device(device).type == "cpu"


@pytest.mark.parametrize("text", ["gpu", "GPU", "cuda:x", "cuda:-1", "cuda:1:2", ""])
def test_parse_device_refuses_strings_that_name_no_device(text):
    with pytest.raises(DeviceError) as err:
        parse_device(text)
    assert str(err.value) == f"--device {text or repr('')}: not a device; expected cpu, cuda or cuda:N"


@pytest.mark.parametrize("text", ["cuda", "cuda:0", "cuda:3"])
def test_parse_device_refuses_cuda_where_there_is_none(monkeypatch, text):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as err:
        parse_device(text)
    assert str(err.value).startswith(f"--device {text}: CUDA is not available here (torch {torch.__version__}")
    assert str(err.value).endswith("; use --device cpu")
    with pytest.raises(DeviceError, match=r"^device cuda: CUDA is not available here .*use device='cpu'$"):
        parse_device("cuda", option="device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_parse_device_on_this_cpu_only_machine():
    with pytest.raises(DeviceError, match=r"--device cuda: CUDA is not available here"):
        parse_device("cuda")
    assert default_device() == torch.device("cpu")


def test_parse_device_refuses_a_gpu_index_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    assert parse_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError) as err:
        parse_device("cuda:3")
    assert str(err.value) == "--device cuda:3: there is no GPU 3 here; this machine has 2 (cuda:0 ... cuda:1)"
    assert default_device(1) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"^--gpu-id 2: there is no GPU 2 here; this machine has 2"):
        default_device(2)


def test_parse_device_refuses_device_types_that_are_not_here():
    with pytest.raises(DeviceError, match=r"^--device meta: meta is not available here; expected cpu, cuda or cuda:N"):
        parse_device("meta")


def test_distributed_resolve_device_uses_the_same_check(monkeypatch):
    from ddpseg.engine.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^device gpu: not a device"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^device cuda: CUDA is not available here"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    # as mmcv's launcher (rank % GPUs): a process that sees one GPU (per-process CUDA_VISIBLE_DEVICES) takes cuda:0
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda", local_rank=6) == torch.device("cuda", 2)


def test_init_model_checks_the_device_before_any_work(tmp_path, monkeypatch):
    import ddpseg

    with pytest.raises(DeviceError, match=r"^device gpu: not a device; expected cpu, cuda or cuda:N$"):
        ddpseg.init_model(tmp_path / "missing.py", tmp_path / "missing.pth", device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^device cuda: CUDA is not available here"):
        ddpseg.init_model(tmp_path / "missing.py", device="cuda")


def test_device_argument_turns_a_bad_device_into_an_argparse_usage_error(capsys):
    import argparse

    from ddpseg.runtime import device_argument

    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--device", type=device_argument, default="cpu")
    assert parser.parse_args([]).device == torch.device("cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "gpu"])
    assert "bench: error: argument --device: gpu: not a device; expected cpu, cuda or cuda:N" in capsys.readouterr().err
