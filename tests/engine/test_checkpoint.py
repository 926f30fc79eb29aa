import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ddpseg.engine.checkpoint import (
    CheckpointError,
    check_resumable,
    find_latest,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    update_latest,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def write(work_dir: Path, n: int, *, latest: bool = True, size: int = 16, name: str = "") -> Path:
    name = name or f"iter_{n}"
    meta_path = save_checkpoint(
        work_dir, name, state_dict={"w": torch.full((size,), float(n)), "b": torch.arange(3)}, iteration=n,
        training_state={"optimizer": {"state": {0: {"step": torch.tensor(float(n))}}, "param_groups": []},
                        "rng": [{"torch": torch.get_rng_state()}]},
        config_text="model = dict(type='X')", model_config={"type": "X", "depths": (1, 2)},
        meta={"CLASSES": ("a", "b"), "best": np.float64(0.5)},
    )
    if latest:
        update_latest(work_dir, name, n)
    return meta_path


def test_round_trip_keeps_weights_metadata_and_weights_only_training_state(tmp_path):
    write(tmp_path, 7)
    ckpt = load_checkpoint(tmp_path / "iter_7.safetensors", with_training_state=True)
    assert torch.equal(ckpt["state_dict"]["w"], torch.full((16,), 7.0))
    assert ckpt["iter"] == 7 and ckpt["format"] == "ddpseg"
    assert ckpt["config"] == "model = dict(type='X')"
    assert ckpt["model_config"] == {"type": "X", "depths": [1, 2]}
    assert ckpt["meta"] == {"CLASSES": ["a", "b"], "best": 0.5}
    assert ckpt["training_state"]["optimizer"]["state"][0]["step"].item() == 7.0
    # The state file is plain tensors and containers: the strict loader reads it without help.
    torch.load(tmp_path / "iter_7.state.pt", weights_only=True)
    metadata = json.loads((tmp_path / "iter_7.json").read_text())
    assert metadata["torch_version"] == torch.__version__ and "ddpseg_version" in metadata


def test_latest_pointer_resolves_from_the_work_dir_and_from_latest_json(tmp_path):
    write(tmp_path, 1)
    write(tmp_path, 2)
    assert find_latest(tmp_path) == tmp_path / "iter_2.json"
    assert load_checkpoint(tmp_path)["iter"] == 2
    assert load_checkpoint(tmp_path / "latest.json")["iter"] == 2
    assert load_checkpoint(tmp_path / "iter_1")["iter"] == 1
    assert find_latest(tmp_path / "nothing_here") is None


def test_keep_last_k_spares_latest_and_best(tmp_path):
    for n in (1, 2, 3):
        write(tmp_path, n)
    write(tmp_path, 2, latest=False, name="best_mIoU_iter_2")
    write(tmp_path, 4, latest=False)  # newer than latest (e.g. written, pointer not yet moved)
    removed = prune_checkpoints(tmp_path, keep=1)
    assert sorted(removed) == ["iter_1", "iter_2"]
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert "iter_3.json" in remaining and "iter_4.json" in remaining  # iter_3 is what latest.json names
    assert "best_mIoU_iter_2.safetensors" in remaining
    assert not any(name.startswith("iter_1") or name.startswith("iter_2") for name in remaining)


def test_training_state_with_pickled_objects_is_refused_at_save_time(tmp_path):
    with pytest.raises(TypeError, match=r"training_state\['data'\]\[0\] is a ndarray"):
        save_checkpoint(tmp_path, "iter_1", state_dict={}, iteration=1, training_state={"data": [np.zeros(2)]})
    assert list(tmp_path.iterdir()) == []


def test_foreign_formats_load_weights_only(tmp_path):
    fixture = load_checkpoint(FIXTURES / "mini_convnext.pth")  # the original's plain state dict
    assert fixture["format"] == "pth" and len(fixture["state_dict"]) > 100
    # mmseg's published layout, with DataParallel prefixes and a numpy scalar in meta.
    weights = {"module.conv.weight": torch.ones(2, 2)}
    torch.save({"meta": {"iter": 160000, "hook_msgs": {"best_score": np.float64(0.8)}}, "state_dict": weights,
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "mmseg.pth")
    ckpt = load_checkpoint(tmp_path / "mmseg.pth")
    assert list(ckpt["state_dict"]) == ["conv.weight"] and ckpt["iter"] == 160000
    assert ckpt["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.8)
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.ones(2, 2)}, str(tmp_path / "bare.safetensors"))
    assert load_checkpoint(tmp_path / "bare.safetensors")["format"] == "safetensors"
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save({"state_dict": weights, "meta": {"args": argparse.Namespace(lr=1)}}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"pickled.pth holds pickled Python objects .*argparse\.Namespace"):
        load_checkpoint(tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="no training state"):
        load_checkpoint(tmp_path / "mmseg.pth", with_training_state=True)


def test_load_weights_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4), "9.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        load_weights(model, state)
    message = str(info.value)
    assert "missing keys (2)" in message and "1.weight" in message
    assert "unexpected keys (1)" in message and "9.weight" in message
    assert "0.bias: checkpoint (4,) vs model (3,)" in message
    with pytest.warns(UserWarning):
        load_weights(model, state, strict=False)
    assert torch.equal(model[0].weight, torch.zeros(3, 2))


def test_resume_check_names_what_differs(tmp_path):
    write(tmp_path, 1)
    ckpt = load_checkpoint(tmp_path)
    model = nn.Module()
    model.w, model.b = nn.Parameter(torch.zeros(16)), nn.Parameter(torch.zeros(3))
    check_resumable(ckpt, model, {"type": "X", "depths": [1, 2]})
    with pytest.raises(CheckpointError, match=r"model.depths: \[1, 2\] in the checkpoint, \[1, 3\] now"):
        check_resumable(ckpt, model, {"type": "X", "depths": (1, 3)})


def test_unwritable_or_full_destination_raises_naming_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    resource = pytest.importorskip("resource")
    write(tmp_path, 1)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(CheckpointError, match=str(not_a_dir)):
        write(not_a_dir, 2)
    # A file-size limit makes the weights write fail like a full disk would.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointError, match=str(tmp_path / "iter_2.safetensors")):
            write(tmp_path, 2, size=1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not list(tmp_path.glob(".*.tmp"))
    assert not (tmp_path / "iter_2.safetensors").exists()
    assert load_checkpoint(tmp_path)["iter"] == 1


KILLED_WRITER = r"""
import os, sys, time
import torch
from ddpseg.engine import checkpoint as ck

work_dir, pause_at = sys.argv[1], int(sys.argv[2])

def save(n):
    big = torch.full((1024, 1024), float(n))  # 4 MB
    ck.save_checkpoint(work_dir, f"iter_{n}", state_dict={"w": big}, iteration=n,
                       training_state={"optimizer": {"m": big.clone()}})
    ck.update_latest(work_dir, f"iter_{n}", n)

save(1)
real_replace = os.replace
calls = [0]

def replace_then_hang(src, dst):
    calls[0] += 1
    if calls[0] == pause_at:  # the temp file is complete and fsynced; die before the rename
        print("PAUSED", dst, flush=True)
        time.sleep(120)
    real_replace(src, dst)

os.replace = replace_then_hang
save(2)
"""


@pytest.mark.parametrize("pause_at", [1, 4], ids=["before-weights-rename", "before-latest-rename"])
def test_kill_during_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path, pause_at):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), str(pause_at)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PAUSED"), proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".*.tmp"))  # the kill left a temporary file
    ckpt = load_checkpoint(tmp_path, with_training_state=True)
    assert ckpt["iter"] == 1
    assert torch.equal(ckpt["state_dict"]["w"], torch.full((1024, 1024), 1.0))
    assert torch.equal(ckpt["training_state"]["optimizer"]["m"], torch.full((1024, 1024), 1.0))
    remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


# --- files that are not checkpoints: one clear error naming the file, never torch's internals ---------------------
class Payload:
    """Stands for any pickled object of a foreign class."""


class RunsCode:
    """Unpickling this would run a shell command: weights-only loading must refuse it without calling it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _not_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name → (file, expected message part)."""
    rng = np.random.default_rng(0)
    files = {
        "text": (b"my notes about the run\n", r"is not a PyTorch checkpoint \(neither a zip archive nor a pickle"
                                               r".*text file starting with 'my notes about the run'"),
        "random": (rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), r"is not a PyTorch checkpoint \(neither"),
        "empty": (b"", r"is empty \(0 bytes\)"),
        "markdown": ((Path(__file__).resolve().parents[2] / "README.md").read_bytes(), r"is not a PyTorch checkpoint"),
        "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n", "Git LFS pointer"),
        "bad_pickle": (b"\x80\x02" + rng.integers(0, 256, 64, dtype=np.uint8).tobytes(),
                       r"is a pickle but not a readable PyTorch checkpoint"),
    }
    out = {}
    for name, (data, message) in files.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        out[name] = (path, message)
    return out


@pytest.mark.parametrize("name", ["text", "random", "empty", "markdown", "lfs", "bad_pickle"])
def test_a_file_that_is_not_a_checkpoint_gets_one_clear_error_naming_it(tmp_path, name):
    path, message = _not_checkpoints(tmp_path)[name]
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert str(path) in text
    assert "weights_only" not in text and "file an issue" not in text.lower()
    assert info.value.__class__ is CheckpointError


def test_truncated_and_foreign_torch_files_are_named_and_explained(tmp_path):
    weights = {"conv.weight": torch.arange(1000.0)}
    torch.save(weights, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pth is a zip archive but not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save(weights, tmp_path / "protocol0.pth", _use_new_zipfile_serialization=False, pickle_protocol=0)
    with pytest.raises(CheckpointError, match=r"protocol0.pth was written by torch.save with pickle protocol 0 or 1"):
        load_checkpoint(tmp_path / "protocol0.pth")
    torch.save(weights, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(tmp_path / "legacy.pth")["state_dict"]["conv.weight"], torch.arange(1000.0))
    data = (tmp_path / "legacy.pth").read_bytes()
    (tmp_path / "legacy_cut.pth").write_bytes(data[:40])
    with pytest.raises(CheckpointError, match=r"legacy_cut.pth is (truncated|a pickle but not a readable)"):
        load_checkpoint(tmp_path / "legacy_cut.pth")
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "w.safetensors"))
    (tmp_path / "w.pth").write_bytes((tmp_path / "w.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"w.pth is a safetensors file.*name it \*\.safetensors"):
        load_checkpoint(tmp_path / "w.pth")
    (tmp_path / "full.safetensors").write_bytes((tmp_path / "full.pth").read_bytes())
    with pytest.raises(CheckpointError, match=r"full.safetensors is a PyTorch checkpoint .*not a safetensors file"):
        load_checkpoint(tmp_path / "full.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"cut.safetensors is not a readable safetensors file \(truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "notes.safetensors").write_text("see the shared drive\n")
    with pytest.raises(CheckpointError, match=r"notes.safetensors is not a readable safetensors file.*text file"):
        load_checkpoint(tmp_path / "notes.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.safetensors is empty"):
        load_checkpoint(tmp_path / "empty.safetensors")


def test_pickled_code_is_never_executed_and_the_message_never_suggests_unsafe_loading(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": RunsCode(marker)}, tmp_path / "evil.pth")
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Payload()}, tmp_path / "object.pth")
    for name, found in (("evil.pth", "posix.system"), ("object.pth", "Payload")):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        text = str(info.value)
        assert text.startswith(f"{tmp_path / name} holds pickled Python objects other than tensors and plain")
        assert found in text and "without executing pickled code" in text
        assert "weights_only" not in text and "add_safe_globals" not in text
    assert not marker.exists()


def test_metadata_without_weights_key_or_with_a_bad_one_is_a_clear_error(tmp_path):
    meta_path = write(tmp_path, 3)
    metadata = json.loads(meta_path.read_text())
    del metadata["weights"]
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"iter_3.json has no 'weights' key.*iter_3.safetensors"):
        load_checkpoint(tmp_path)
    metadata["weights"] = "../elsewhere.safetensors"
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"iter_3.json: 'weights' must be a file name in the same folder"):
        load_checkpoint(meta_path)
    metadata["weights"] = "gone.safetensors"
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"iter_3.json names the weights file gone.safetensors, which does not"):
        load_checkpoint(meta_path)
    meta_path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"iter_3.json is not a ddpseg-checkpoint metadata file"):
        load_checkpoint(meta_path)


def test_a_corrupt_training_state_names_its_file(tmp_path):
    write(tmp_path, 2)
    (tmp_path / "iter_2.state.pt").write_text("overwritten")
    with pytest.raises(CheckpointError, match=r"iter_2.state.pt is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path, with_training_state=True)
    (tmp_path / "iter_2.state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"names the training state file iter_2.state.pt, which does not exist"):
        load_checkpoint(tmp_path, with_training_state=True)


def test_load_weights_names_the_given_source(tmp_path):
    model = nn.Linear(2, 3)
    with pytest.raises(CheckpointError, match=r"weights in ck/good.pth do not fit Linear"):
        load_weights(model, {"weight": torch.zeros(1)}, source_name="ck/good.pth")
    with pytest.raises(CheckpointError, match=r"weights in <state dict> do not fit Linear"):
        load_weights(model, {"weight": torch.zeros(1)})
