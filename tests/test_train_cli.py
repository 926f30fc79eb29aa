"""``ddpseg train`` / ``tools/train.py`` / ``tools/dist_train.sh`` / ``ddpseg quickstart`` / ``ddpseg plot-log``
end to end, on the mini DDP of the quickstart config and a tiny synthetic Cityscapes-layout dataset.

The runs go through ``ddpseg.cli.main`` in this process (one model warm-up for all of them); the launcher
scripts run as subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpseg.cli import build_parser, main
from ddpseg.data.synthetic import make_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/quickstart/ddp_convnext_mini_synthetic.py")
FIXTURE = REPO / "tests/fixtures/mini_convnext.pth"
ITERS = 12


@pytest.fixture(scope="module", autouse=True)
def _isolated_process():
    """One intra-op thread (tiny tensors; robust on a busy machine); LOCAL_RANK, which the command sets as the
    original does, is kept out of the other tests' environment."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("LOCAL_RANK", "0")
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("synthetic"), num_train=4, num_val=1, size=(64, 128))


def tiny_options(root: Path, iters: int = ITERS) -> list[str]:
    """--cfg-options shrinking the quickstart run: 32x64 crops, one image per batch, a fast warm-up."""
    return [
        *(f"data.{split}.data_root={root}" for split in ("train", "val", "test")),
        f"runner.max_iters={iters}", f"checkpoint_config.interval={iters // 2}", f"evaluation.interval={iters}",
        "log_config.interval=1", "data.samples_per_gpu=1", "optimizer.lr=0.002", "lr_config.warmup_iters=2",
        "data.train.pipeline.2.img_scale=(128,64)", "data.train.pipeline.3.crop_size=(32,64)",
        "data.train.pipeline.7.size=(32,64)", "data.val.pipeline.1.img_scale=(128,64)",
    ]


def train_cli(work_dir: Path, *args: str, options: list[str]) -> int:
    """A CPU run (also on a machine with a GPU: these tests check CPU results bit for bit)."""
    return main(["train", CONFIG, "--work-dir", str(work_dir), "--no-progress", "--device", "cpu", *args,
                 "--cfg-options", *options])


def train_records(work_dir: Path) -> list[dict]:
    lines = (work_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["mode"] == "train"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One uninterrupted run of ITERS iterations, checkpoints at ITERS/2 and ITERS."""
    work_dir = tmp_path_factory.mktemp("run") / "work"
    assert train_cli(work_dir, "--seed", "3", options=tiny_options(data_root)) == 0
    return work_dir


def test_train_cli_loss_falls_and_writes_checkpoints_logs_metrics_and_config(trained):
    losses = [r["loss"] for r in train_records(trained)]
    assert len(losses) == ITERS and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert json.loads((trained / "latest.json").read_text())["checkpoint"] == f"iter_{ITERS}.json"
    assert (trained / f"iter_{ITERS // 2}.safetensors").is_file()
    assert (trained / f"best_mIoU_iter_{ITERS}.json").is_file()
    assert list(trained.glob("*.log"))
    if importlib.util.find_spec("tensorboard") is not None:  # an optional extra
        assert (trained / "tf_logs").is_dir()
    assert (trained / Path(CONFIG).name).is_file()  # the merged config, as mmseg dumps it
    meta = json.loads((trained / f"iter_{ITERS}.json").read_text())["meta"]
    assert meta["seed"] == 3 and len(meta["CLASSES"]) == 19 and meta["exp_name"] == Path(CONFIG).name


def assert_resumed_run_ends_as_the_full_run(full: Path, resumed: Path, half: int) -> None:
    """Bit-equal final weights, and the resumed run logs the full run's second half (iteration, lr, loss)."""
    first, second = load_file(full / f"iter_{ITERS}.safetensors"), load_file(resumed / f"iter_{ITERS}.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    logged = [[(r["iter"], r["lr"], r["loss"]) for r in train_records(w)] for w in (full, resumed)]
    assert logged[1] == logged[0][half:]


def test_resume_from_the_middle_checkpoint_ends_bit_identical(trained, tmp_path, data_root, capsys, recwarn):
    half = ITERS // 2
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for file in trained.glob(f"iter_{half}.*"):
        shutil.copy(file, resumed / file.name)
    # No --seed: the run's seed comes from the checkpoint.
    assert train_cli(resumed, "--resume", str(resumed / f"iter_{half}.json"), options=tiny_options(data_root)) == 0
    assert_resumed_run_ends_as_the_full_run(trained, resumed, half)
    assert f"resumed from {resumed / f'iter_{half}.json'} at iteration {half}" in capsys.readouterr().err
    assert not [w for w in recwarn if "not an exact continuation" in str(w.message)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_deterministic_cuda_run_resumes_bit_identical(tmp_path, data_root):
    """On a GPU, bit-identical continuation needs --deterministic (the Triton gather's backward adds atomically
    in no fixed order, so that mode trains with the portable path). Subprocesses, so cuBLAS starts with the
    workspace setting --deterministic asks for."""
    half = ITERS // 2
    full, resumed = tmp_path / "full", tmp_path / "resumed"

    def train(work_dir, *args):
        command = [sys.executable, str(REPO / "tools/train.py"), CONFIG, "--work-dir", str(work_dir), "--no-progress",
                   "--device", "cuda", "--deterministic", *args, "--cfg-options", *tiny_options(data_root)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    train(full, "--seed", "0")
    resumed.mkdir()
    for file in full.glob(f"iter_{half}.*"):
        shutil.copy(file, resumed / file.name)
    train(resumed, "--resume", str(resumed / f"iter_{half}.json"))
    assert_resumed_run_ends_as_the_full_run(full, resumed, half)


def test_a_new_run_refuses_a_work_dir_that_holds_another_run(trained, data_root, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    assert train_cli(trained, "--seed", "4", options=tiny_options(data_root)) == 1
    err = capsys.readouterr().err
    assert f"work dir {trained} already holds a training run (latest checkpoint: iter_{ITERS}.json)" in err
    assert "--resume" in err
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before  # nothing written or pruned


def test_resume_with_changed_training_settings_warns_naming_them(trained, tmp_path, data_root, recwarn):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for file in trained.glob(f"iter_{ITERS // 2}.*"):
        shutil.copy(file, resumed / file.name)
    options = [*tiny_options(data_root), "optimizer.lr=0.003", "data.samples_per_gpu=2"]
    assert train_cli(resumed, "--resume", str(resumed / f"iter_{ITERS // 2}.json"), options=options) == 0
    messages = [str(w.message) for w in recwarn if "not an exact continuation" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in recwarn]
    assert "optimizer.lr: 0.002 in the checkpoint, 0.003 now" in messages[0]
    assert "data.samples_per_gpu: 1 in the checkpoint, 2 now" in messages[0]


def test_resume_refuses_a_checkpoint_of_another_config(trained, tmp_path, data_root, capsys):
    options = [*tiny_options(data_root), "model.decode_head.encoder.num_layers=1"]
    assert train_cli(tmp_path / "other", "--resume", str(trained), options=options) == 1
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "num_layers" in err


def test_self_aligned_model_trains_from_an_official_checkpoint(tmp_path, data_root):
    options = [*tiny_options(data_root, iters=2), "model.type=SelfAlignedDDP", "lr_config.warmup_iters=50"]
    assert train_cli(tmp_path / "aligned", "--load-from", str(FIXTURE), "--no-validate", options=options) == 0
    trained = load_file(tmp_path / "aligned" / "iter_2.safetensors")
    official = torch.load(FIXTURE, weights_only=True)
    official = official.get("state_dict", official)
    key = "backbone.downsample_layers.0.0.weight"  # same name in both layouts
    # Two warm-up steps at lr ~1e-5 move the weights by ~1e-5: they started from the checkpoint.
    torch.testing.assert_close(trained[key], official[key], rtol=0, atol=1e-3)
    assert not torch.equal(trained[key], official[key])
    assert json.loads((tmp_path / "aligned" / "iter_2.json").read_text())["model_config"]["type"] == "SelfAlignedDDP"


def test_load_from_a_checkpoint_of_another_class_count_fine_tunes_it_with_fresh_classifiers(tmp_path, data_root, recwarn):
    state = torch.load(FIXTURE, weights_only=True)
    state = dict(state.get("state_dict", state))
    for key in ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias", "auxiliary_head.conv_seg.weight",
                "auxiliary_head.conv_seg.bias"):
        state[key] = state[key][:8]  # an 8-class model
    state["embedding_table.weight"] = state["embedding_table.weight"][:9]  # the original name of the label embedding
    torch.save(state, tmp_path / "eight_classes.pth")
    assert train_cli(tmp_path / "w", "--load-from", str(tmp_path / "eight_classes.pth"),
                     options=tiny_options(data_root)) == 0
    messages = [str(w.message) for w in recwarn if "keep their fresh initialisation" in str(w.message)]
    assert len(messages) == 1 and "the checkpoint predicts 8 classes, the config 19" in messages[0]
    assert "label_encoder.embedding.weight" in messages[0] and "auxiliary_head.conv_seg.bias" in messages[0]
    trained = load_file(tmp_path / "w" / f"iter_{ITERS}.safetensors")
    assert trained["decode_head.conv_seg.weight"].shape[0] == 19
    key = "backbone.downsample_layers.0.0.weight"  # loaded from the checkpoint, then moved a little by training
    torch.testing.assert_close(trained[key], state[key], rtol=0, atol=1e-2)


def test_load_from_with_other_mismatches_names_the_keys(tmp_path, data_root, capsys):
    state = torch.load(FIXTURE, weights_only=True)
    state = dict(state.get("state_dict", state))
    state["decode_head.conv_seg.weight"] = state["decode_head.conv_seg.weight"][:8]
    state["decode_head.conv_seg.bias"] = state["decode_head.conv_seg.bias"][:8]
    state["neck.0.fpn_convs.0.conv.weight"] = state["neck.0.fpn_convs.0.conv.weight"][:, :3]  # original names
    torch.save(state, tmp_path / "other.pth")
    assert train_cli(tmp_path / "w", "--load-from", str(tmp_path / "other.pth"), options=tiny_options(data_root)) == 1
    err = capsys.readouterr().err
    assert "decode_head.conv_seg.weight: checkpoint (8, 64, 1, 1) vs model (19, 64, 1, 1)" in err
    assert "fpn_convs.0.conv.weight" in err
    assert "the checkpoint predicts 8 classes, the config 19" in err


@pytest.mark.parametrize(
    "options, message",
    [
        (["evaluation.intervl=5"], "unknown key 'intervl' (did you mean 'interval'?) in evaluation"),
        (["data.train.data_root=/nonexistent/ddpseg"], "/nonexistent/ddpseg"),
        (["data.train.img_suffx=.png"], "img_suffx"),
        (["optimizer.paramwise_cfg.custom_key=1"], "custom_key"),
        (["runer.max_iters=1"], "unknown top-level key 'runer' (did you mean 'runner'?)"),
        (["runner.max_iter=1"], "unknown key 'max_iter' (did you mean 'max_iters'?) in runner"),
        (["optimizer.weight_decayy=1"], "unknown key 'weight_decayy' (did you mean 'weight_decay'?) in optimizer"),
        (["evaluation.save_best=mDice"], "evaluation.save_best='mDice' is not a result of evaluation.metric='mIoU'"),
        (["data.samples_per_gpu=two"], "data.samples_per_gpu must be an integer >= 1, got 'two'"),
        (["model.timesteps=three"], "model.timesteps must be an integer >= 1, got 'three'"),
        (["model.auxiliary_head.num_classes=4"], "model.auxiliary_head.num_classes (4) must equal"),
        (["model.neck.0.in_channels=[32,64,128,128]"], "must be the channels of the backbone's feature maps"),
    ],
)
def test_bad_configs_fail_naming_the_key_or_file(options, message, tmp_path, data_root, capsys):
    assert train_cli(tmp_path / "w", options=[*tiny_options(data_root), *options]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if not options[0].startswith("data.train."):  # refused by the config check, before the work dir is made
        assert not (tmp_path / "w").exists()


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_non_finite_loss_stops_naming_the_iteration(tmp_path, data_root, capsys):
    options = [*tiny_options(data_root), "data.train.pipeline.6.std=[0,0,0]"]  # (img - mean) / 0
    assert train_cli(tmp_path / "w", "--no-validate", options=options) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at iteration 1" in err and "none saved in this run" in err


def test_unwritable_work_dir_fails_before_training(tmp_path, data_root, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train_cli(blocker / "work", options=tiny_options(data_root)) == 1
    assert str(blocker / "work") in capsys.readouterr().err


def test_the_original_train_arguments_parse():
    args = build_parser().parse_args([
        "train", "cfg.py", "--work-dir", "w", "--load-from", "a.pth", "--resume-from", "b.json", "--no-validate",
        "--gpus", "1", "--seed", "7", "--deterministic", "--options", "x=1", "--launcher", "pytorch",
        "--local_rank", "1", "--auto-resume", "--diff_seed",
    ])
    assert (args.work_dir, args.load_from, args.resume_from, args.no_validate) == ("w", "a.pth", "b.json", True)
    assert (args.gpus, args.seed, args.deterministic, args.options, args.launcher) == (1, 7, True, {"x": 1}, "pytorch")
    assert (args.local_rank, args.auto_resume, args.diff_seed) == (1, True, True)
    args = build_parser().parse_args(["train", "cfg.py", "--gpu-ids", "2", "3", "--local-rank=2", "--resume",
                                      "--cfg-options", "a.b=[1,2]", "--amp", "bf16", "--device", "cpu"])
    assert (args.gpu_ids, args.local_rank, args.resume, args.cfg_options) == ([2, 3], 2, "auto", {"a.b": [1, 2]})
    assert build_parser().parse_args(["train", "cfg.py", "--resume", "x.json"]).resume == "x.json"


@pytest.mark.parametrize("extra, message", [
    (["--options", "a=1", "--cfg-options", "a=2"], "cannot be both specified"),
    (["--launcher", "slurm"], "launch with torchrun"),
    (["--launcher", "pytorch"], "needs torchrun's environment"),
    (["--resume", "a", "--resume-from", "b"], "cannot be both specified"),
    (["--device", "gpu"], "--device gpu: not a device; expected cpu, cuda or cuda:N"),
])
def test_conflicting_or_unsupported_arguments_are_refused(extra, message, capsys):
    assert main(["train", CONFIG, *extra]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train", "missing.py"], ["quickstart", "--out", "qs"]])
def test_cuda_without_cuda_is_one_clear_line_before_any_work(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ddpseg {command[0]}: error: --device cuda: CUDA is not available here (torch ")
    assert err.count("\n") == 1 and "use --device cpu" in err
    assert list(tmp_path.iterdir()) == []


def test_a_cpu_run_on_a_gpu_machine_does_not_pin_its_batches(tmp_path, data_root, monkeypatch):
    """Pinned memory only when training on CUDA: pinning opens a CUDA context on GPU 0 in every process of a
    --device cpu (gloo) run on a GPU machine."""
    from ddpseg.data import loader

    class LoaderBuilt(Exception):
        pass

    real = loader.make_data_loader

    def make_data_loader(*args, **kwargs):
        raise LoaderBuilt(real(*args, **kwargs).pin_memory)

    monkeypatch.setattr(loader, "make_data_loader", make_data_loader)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(LoaderBuilt) as built:
        train_cli(tmp_path / "w", options=tiny_options(data_root))
    assert built.value.args == (False,)


def test_load_from_a_file_that_is_not_a_checkpoint_names_it(tmp_path, data_root, capsys):
    notes = tmp_path / "notes.pth"
    notes.write_text("the weights are on the shared drive\n")
    assert train_cli(tmp_path / "w", "--load-from", str(notes), options=tiny_options(data_root)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ddpseg train: error: {notes} is not a PyTorch checkpoint (neither a zip archive nor a pickle")
    assert err.count("\n") == 1


def test_tools_train_py_runs_the_train_command(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools/train.py"), str(tmp_path / "missing.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "config file not found" in result.stderr


def test_plot_log_draws_the_curves_of_a_work_dir(trained, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["plot-log", str(trained), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-log", str(tmp_path)]) == 1
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def test_quickstart_writes_overlay_uncertainty_curves_and_results_into_one_folder(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--iters", "2", "--num-train", "2", "--num-val", "1"]) == 0
    for name in ("demo_overlay.png", "demo_uncertainty.png", "demo_comparison.png", "training_curves.png",
                 "results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["mIoU"] <= 1 and results["iters"] == 2
    printed = capsys.readouterr().out
    assert str(out / "demo_overlay.png") in printed and "mIoU" in printed
    # again into the same folder: it says what it reuses and continues the finished run (no new training)
    assert main(["quickstart", "--out", str(out), "--iters", "2"]) == 0
    printed = capsys.readouterr().out
    assert "reusing the synthetic dataset of an earlier run" in printed
    assert "continuing the earlier run from iter_2.json" in printed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dist_train_sh_trains_two_cpu_processes_that_end_with_identical_parameters(tmp_path, data_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PORT": str(_free_port()), "PYTHON": sys.executable}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    work_dir = tmp_path / "dist"
    command = ["bash", str(REPO / "tools/dist_train.sh"), CONFIG, "2", "--work-dir", str(work_dir), "--seed", "0",
               "--no-progress", "--device", "cpu", "--cfg-options", *tiny_options(data_root, iters=4)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "parameters identical on all 2 processes" in result.stderr
    assert json.loads((work_dir / "latest.json").read_text())["checkpoint"] == "iter_4.json"
    state = torch.load(work_dir / "iter_4.state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_speedups_section_trains_the_same_run_in_channels_last(tmp_path, data_root):
    """``speedups.channels_last`` (config) = ``--channels-last`` (flag): same losses up to conv rounding, and
    its checkpoint loads like any other."""
    iters = 4
    work_dir, plain_dir = tmp_path / "nhwc", tmp_path / "nchw"
    options = tiny_options(data_root, iters)
    assert train_cli(plain_dir, "--seed", "3", "--no-validate", options=options) == 0
    assert train_cli(work_dir, "--seed", "3", "--no-validate", options=[*options, "speedups.channels_last=True"]) == 0
    assert "channels_last True" in next(work_dir.glob("*.log")).read_text()
    ours = [r["loss"] for r in train_records(work_dir)]
    reference = [r["loss"] for r in train_records(plain_dir)]
    assert len(ours) == iters
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(reference), rtol=1e-3, atol=0)
    weights = load_file(str(next(work_dir.glob(f"iter_{iters}*.safetensors"))))
    assert weights["backbone.downsample_layers.0.0.weight"].is_contiguous()


def test_bad_speedups_section_names_the_key(tmp_path, data_root, capsys):
    options = [*tiny_options(data_root), "speedups.chanels_last=True"]
    assert train_cli(tmp_path / "w", options=options) == 1
    assert "unknown key(s) ['chanels_last'] in speedups" in capsys.readouterr().err


@pytest.mark.parametrize("script, args", [("dist_train.sh", ["cfg.py", "two"]), ("dist_train.sh", ["cfg.py", "w/iter_4.json"]),
                                          ("dist_test.sh", ["cfg.py", "ck.json", "0"])])
def test_dist_scripts_refuse_a_process_count_that_is_not_a_positive_number(script, args):
    tools = Path(__file__).resolve().parents[1] / "tools"
    result = subprocess.run(["bash", str(tools / script), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "must be a number" in result.stderr and f"got '{args[-1]}'" in result.stderr
