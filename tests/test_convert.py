"""Official checkpoint → ddpseg checkpoint → same predictions; loading errors are explicit."""

from __future__ import annotations

import pytest
import torch

import ddpseg
from ddpseg.cli import main
from ddpseg.convert import CheckpointError, load_model_weights, read_checkpoint

from .conftest import FIXTURES


def test_convert_command_writes_safetensors_and_config_that_reload_to_the_same_predictions(tmp_path, golden):
    cfg = FIXTURES / "mini_convnext_config.py"
    assert main(["convert", str(FIXTURES / "mini_convnext.pth"), str(tmp_path / "mini"), "--config", str(cfg)]) == 0
    assert (tmp_path / "mini.safetensors").is_file() and (tmp_path / "mini.py").is_file()
    original = ddpseg.init_model(cfg, FIXTURES / "mini_convnext.pth")
    converted = ddpseg.init_model(None, tmp_path / "mini.safetensors")  # config read from the checkpoint
    from_py = ddpseg.init_model(tmp_path / "mini.py", tmp_path / "mini.safetensors")
    img, noise = golden["inputs"]["main"], golden["main"]["noise"]
    ref = original.sample_logits(img, steps=2, noise=noise)
    assert torch.equal(converted.sample_logits(img, steps=2, noise=noise), ref)
    assert torch.equal(from_py.sample_logits(img, steps=2, noise=noise), ref)


def test_wrapped_official_checkpoints_load_too(tmp_path, mini_model_cfg):
    state = torch.load(FIXTURES / "mini_convnext.pth", weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"meta": {"CLASSES": [f"c{i}" for i in range(19)]}, "state_dict": state}, wrapped)
    model = ddpseg.init_model(dict(model=mini_model_cfg), wrapped)
    assert model.class_names[0] == "c0"


def test_mismatched_checkpoint_lists_the_offending_keys(tmp_path, mini_model_cfg):
    state = torch.load(FIXTURES / "mini_convnext.pth", weights_only=True)
    state.pop("transform.conv.bias")
    state["decode_head.conv_seg.weight"] = torch.zeros(7, 64, 1, 1)
    state["something.else"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        ddpseg.init_model(dict(model=mini_model_cfg), bad)
    text = str(err.value)
    assert "transform.bias" in text and "something.else" in text and "decode_head.conv_seg.weight" in text
    assert "number of classes" in text
    assert text.startswith(f"weights in {bad} do not fit DDP:") and "<state dict>" not in text


class Payload:
    """Stands for any pickled object: weights_only loading must refuse it."""


def test_pickled_code_is_refused(tmp_path, mini_model):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="without executing pickled code"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_weights(mini_model, tmp_path / "missing.pth")


def test_init_model_takes_a_training_work_dir_or_its_metadata_file(tmp_path, mini_model, golden):
    from ddpseg.config import Config
    from ddpseg.engine.checkpoint import save_checkpoint, update_latest

    text = Config.fromfile(FIXTURES / "mini_convnext_config.py").pretty_text
    meta_path = save_checkpoint(tmp_path, "iter_4", state_dict=mini_model.state_dict(), iteration=4, config_text=text)
    update_latest(tmp_path, "iter_4", 4)
    img, noise = golden["inputs"]["main"], golden["main"]["noise"]
    ref = mini_model.sample_logits(img, steps=1, noise=noise)
    for source in (tmp_path, meta_path, tmp_path / "latest.json"):
        model = ddpseg.init_model(None, source)
        assert torch.equal(model.sample_logits(img, steps=1, noise=noise), ref), source


def test_convert_command_reports_user_errors_in_one_line(tmp_path, capsys):
    cfg = str(FIXTURES / "mini_convnext_config.py")
    official = str(FIXTURES / "mini_convnext.pth")
    notes = tmp_path / "notes.pth"
    notes.write_text("not weights\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (["nonexist.pth", str(tmp_path / "out")], "checkpoint nonexist.pth not found"),
        ([str(notes), str(tmp_path / "out"), "--config", cfg], f"{notes} is not a PyTorch checkpoint"),
        ([official, str(blocker / "out"), "--config", cfg], f"{blocker} is a file, not a folder"),
        ([official, str(blocker / "sub" / "out"), "--config", cfg], f"{blocker} is a file, not a folder"),
        ([official, str(tmp_path / "out"), "--config", str(tmp_path / "none.py")], "config file not found"),
    ]
    for argv, message in cases:
        assert main(["convert", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ddpseg convert: error: ") and message in err and err.count("\n") == 1, err
    assert set(tmp_path.iterdir()) == {notes, blocker}  # nothing written
