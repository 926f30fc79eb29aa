"""End to end: a tiny DDP trained briefly on a synthetic Cityscapes-like set, then `tools/test.py`,
`tools/dist_test.sh`, `ddpseg test` options and the image demo, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import ddpseg
from ddpseg.cli import main
from ddpseg.data.synthetic import make_synthetic_cityscapes
from ddpseg.evaluation.class_names import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from ddpseg.visualize import get_palette

from .conftest import REPO

DEMO_IMAGE = Path(__file__).resolve().parent / "fixtures" / "cityscapes_demo.png"  # copy of shared/assets
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])

CONFIG_TEXT = """
_base_ = [{base!r}]
data_root = {data_root!r}
img_norm_cfg = dict(mean={mean}, std={std}, to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(128, 64), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                     dict(type='Normalize', **img_norm_cfg), dict(type='ImageToTensor', keys=['img']),
                     dict(type='Collect', keys=['img'])]),
]
data = dict(workers_per_gpu=0,
            train=dict(data_root=data_root),
            val=dict(data_root=data_root, pipeline=test_pipeline),
            test=dict(data_root=data_root, pipeline=test_pipeline))
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in the subprocesses: on a busy 2-core machine, OpenMP threads that
    wait for each other can make these runs 50x slower; one thread per process keeps them steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def _train_briefly(model, data_root: Path, iterations: int = 12) -> None:
    """A plain AdamW loop on forward_train over the 4 synthetic training images (64x128)."""
    images, labels = [], []
    for path in sorted((data_root / "leftImg8bit" / "train").rglob("*_leftImg8bit.png")):
        rgb = cv2.imread(str(path))[:, :, ::-1]
        images.append(torch.from_numpy(((rgb - MEAN) / STD).transpose(2, 0, 1).copy()).float())
        label = str(path).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        labels.append(torch.from_numpy(cv2.imread(label, cv2.IMREAD_UNCHANGED)[None].astype(np.int64)))
    img, gt = torch.stack(images), torch.stack(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for i in range(iterations):
        pick = [(2 * i) % len(img), (2 * i + 1) % len(img)]
        losses = model.forward_train(img[pick], gt[pick])
        loss = sum(v for k, v in losses.items() if "loss" in k)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, checkpoint path) of the tiny model, checkpoint in mmseg's layout with class meta."""
    root = tmp_path_factory.mktemp("e2e")
    data_root = make_synthetic_cityscapes(root / "data", num_train=4, num_val=3, size=(64, 128), seed=0)
    config = root / "mini_synthetic.py"
    base = REPO / "configs" / "quickstart" / "ddp_convnext_mini_synthetic.py"
    config.write_text(CONFIG_TEXT.format(base=str(base), data_root=str(data_root), mean=MEAN.tolist(), std=STD.tolist()))
    torch.manual_seed(0)
    model = ddpseg.init_model(config)
    _train_briefly(model, data_root)
    checkpoint = root / "ckpts" / "mini.pth"
    checkpoint.parent.mkdir()
    meta = {"CLASSES": list(CITYSCAPES_CLASSES), "PALETTE": [list(c) for c in CITYSCAPES_PALETTE]}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, checkpoint)
    return config, checkpoint


def summary_numbers(stdout: str) -> list[float]:
    """The numbers of the printed `Summary:` table."""
    table = stdout.split("Summary:")[1]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert [c.strip() for c in rows[0].strip("|").split("|")][:3] == ["aAcc", "mIoU", "mAcc"]
    return [float(c) for c in rows[1].strip("|").split("|")]


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tools_test_prints_the_tables_and_writes_json_next_to_the_checkpoint(trained):
    config, checkpoint = trained
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "test.py"), str(config), str(checkpoint), "--eval", "mIoU"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "per class results:" in proc.stdout and "|      road     |" in proc.stdout
    a_acc, miou, macc = summary_numbers(proc.stdout)
    assert re.search(r"\| +\d+\.\d{1,2} \| +\d+\.\d{1,2} \| +\d+\.\d{1,2} \|", proc.stdout.split("Summary:")[1])
    assert "3/3" in proc.stderr  # the progress bar
    (written,) = checkpoint.parent.glob("mini_eval_single_scale_*.json")
    record = json.loads(written.read_text())
    assert record["config"] == str(config) and record["steps"] == 3
    assert [round(record["metric"][k] * 100, 2) for k in ("aAcc", "mIoU", "mAcc")] == [a_acc, miou, macc]
    assert record["metric"]["IoU.vegetation"] is None  # absent class: NaN in the table, null in JSON
    assert miou > 0


@pytest.mark.parametrize(
    "extra,mode",
    [
        (["--aug-test"], "whole"),
        (["--cfg-options", "model.test_cfg.mode=slide", "model.test_cfg.crop_size=(48,48)", "model.test_cfg.stride=(32,32)"], "slide"),
        (["--steps", "1"], "whole"),
        (["--amp", "bf16"], "whole"),
        (["--channels-last"], "whole"),
        (["--cfg-options", "speedups.amp=bf16", "speedups.channels_last=True"], "whole"),
    ],
)
def test_aug_test_slide_and_steps_run_and_report_their_settings(trained, tmp_path, capsys, extra, mode):
    config, checkpoint = trained
    out = tmp_path / "metrics.json"
    code, stdout, err = run_cli(["test", str(config), str(checkpoint), "--eval", "mIoU", "--out", str(out), *extra], capsys)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["aug_test"] == ("--aug-test" in extra) and record["test_mode"] == mode
    assert record["steps"] == (1 if "--steps" in extra else 3)
    from_config = any(arg.startswith("speedups.") for arg in extra)
    assert record["amp"] == ("bf16" if "--amp" in extra or from_config else None)
    assert record["channels_last"] == ("--channels-last" in extra or from_config) and record["compile"] is False
    assert summary_numbers(stdout)[1] == round(record["metric"]["mIoU"] * 100, 2)


def test_format_only_writes_cityscapes_label_id_pngs(trained, tmp_path, capsys):
    config, checkpoint = trained
    prefix = tmp_path / "submission"
    argv = ["test", str(config), str(checkpoint), "--format-only", "--eval-options", f"imgfile_prefix={prefix}"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    files = sorted(prefix.glob("*_leftImg8bit.png"))
    assert len(files) == 3
    values = np.unique(np.array(Image.open(files[0])))
    train_id_to_id = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert set(values.tolist()) <= set(train_id_to_id)


def test_show_dir_alone_needs_no_labels_and_writes_an_overlay_per_image(trained, tmp_path, capsys):
    config, checkpoint = trained
    argv = ["test", str(config), str(checkpoint), "--show-dir", str(tmp_path / "show"), "--cfg-options", "data.test.ann_dir=None"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "Summary" not in stdout
    drawn = sorted((tmp_path / "show").rglob("*_leftImg8bit.png"))
    assert len(drawn) == 3 and cv2.imread(str(drawn[0])).shape == (64, 128, 3)


def test_evaluate_dataset_matches_the_command_and_keeps_the_training_mode(trained, tmp_path, capsys):
    from ddpseg.data.build import build_dataset
    from ddpseg.engine.evaluate import evaluate_dataset

    config, checkpoint = trained
    out = tmp_path / "m.json"
    command = ["test", str(config), str(checkpoint), "--eval", "mIoU", "--out", str(out), "--device", "cpu"]
    assert run_cli(command, capsys)[0] == 0  # init_model's default device is the CPU too
    model = ddpseg.init_model(config, checkpoint).train()
    metrics = evaluate_dataset(model, build_dataset(model.cfg.data.test), progress=False, print_tables=False)
    assert model.training
    expected = {k: v for k, v in json.loads(out.read_text())["metric"].items() if v is not None}
    assert {k: v for k, v in metrics.items() if k in expected} == expected
    assert capsys.readouterr().out == ""


def test_a_cpu_evaluation_on_a_gpu_machine_does_not_pin_its_images(trained, monkeypatch):
    """Pinned memory only for a CUDA model: pinning opens a CUDA context on GPU 0 in every process of a CPU (gloo)
    run on a GPU machine."""
    from ddpseg.data.build import build_dataset
    from ddpseg.engine import evaluate

    config, checkpoint = trained
    model = ddpseg.init_model(config, checkpoint)
    pinned, build = [], evaluate.build_test_dataloader

    def build_test_dataloader(*args, **kwargs):
        loader = build(*args, **kwargs)
        pinned.append(loader.pin_memory)
        return loader

    monkeypatch.setattr(evaluate, "build_test_dataloader", build_test_dataloader)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    evaluate.evaluate_dataset(model, build_dataset(model.cfg.data.test), progress=False, print_tables=False)
    assert pinned == [False]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=2.5), r"steps must be an integer >= 1 .*got 2\.5"),
        (dict(format_only=True, format_args=dict(imgfile_prefx="x")),
         r"unknown key 'imgfile_prefx' \(did you mean 'imgfile_prefix'\?\) in format_args"),
        (dict(format_only=True, format_args=dict(imgfile_prefix="x", to_label_id="no")), r"to_label_id must be True or False"),
    ],
)
def test_evaluate_dataset_refuses_bad_arguments_before_the_first_image(trained, tmp_path, kwargs, message):
    from ddpseg.data.build import build_dataset
    from ddpseg.engine.evaluate import evaluate_dataset

    config, checkpoint = trained
    model = ddpseg.init_model(config, checkpoint)
    with pytest.raises(ValueError, match=message):
        evaluate_dataset(model, build_dataset(model.cfg.data.test), progress=False, show_dir=tmp_path / "show", **kwargs)
    assert not (tmp_path / "show").exists()


def test_dist_test_with_two_gloo_processes_gives_the_numbers_of_one_process(trained, tmp_path):
    config, checkpoint = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # one thread per process in both runs, so no floating-point difference can come from threading
    env = _env(PYTHON=sys.executable, PORT=str(port))
    dist_out, single_out = tmp_path / "dist.json", tmp_path / "single.json"
    dist = subprocess.run(
        ["bash", str(REPO / "tools" / "dist_test.sh"), str(config), str(checkpoint), "2", "--eval", "mIoU", "--out", str(dist_out),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(REPO / "tools" / "test.py"), str(config), str(checkpoint), "--eval", "mIoU", "--out", str(single_out),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    dist_record, single_record = json.loads(dist_out.read_text()), json.loads(single_out.read_text())
    assert dist_record["world_size"] == 2 and single_record["world_size"] == 1
    assert dist_record["metric"] == single_record["metric"]
    assert dist.stdout.count("Summary:") == 1  # printed by rank 0 only
    assert summary_numbers(dist.stdout) == summary_numbers(single.stdout)


def test_unwritable_output_fails_before_any_work(trained, tmp_path, capsys):
    config, checkpoint = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, stdout, err = run_cli(["test", str(config), str(checkpoint), "--eval", "mIoU", "--out", str(blocker / "m.json")], capsys)
    assert code == 1 and "a_file" in err and "Summary" not in stdout and err.count("\n") == 1
    code, stdout, err = run_cli(["test", str(config), str(checkpoint), "--show-dir", str(blocker / "show")], capsys)
    assert code == 1 and "--show-dir" in err and "img/s" not in err


def test_class_mismatches_are_clear_errors(trained, tmp_path, capsys):
    config, checkpoint = trained
    wrong = tmp_path / "five_classes.pth"
    state = torch.load(checkpoint, weights_only=True)
    state["meta"]["CLASSES"] = state["meta"]["CLASSES"][:5]
    torch.save(state, wrong)
    code, _, err = run_cli(["test", str(config), str(wrong), "--eval", "mIoU", "--out", str(tmp_path / "m.json")], capsys)
    assert code == 1 and "5 classes" in err and "19" in err
    argv = ["test", str(config), str(checkpoint), "--eval", "mIoU", "--out", str(tmp_path / "m.json"),
            "--cfg-options", "data.test.classes=[road,sidewalk]"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "2 classes" in err and "19" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--eval", "mIoU", "--format-only"], "cannot be both"),
        (["--eval", "mIoU", "--options", "a=1", "--cfg-options", "b=2"], "cannot be both"),
        (["--eval", "accuracy"], "unknown metric"),
        (["--eval", "cityscapes"], "--format-only"),
        (["--eval", "mIoU", "--out", "x.pkl"], "JSON"),
        ([], "at least one operation"),
        (["--eval", "mIoU", "--eval-options", "foo=1"], "unknown key 'foo' in --eval-options"),
        (["--eval", "mIoU", "--eval-options", "imgfile_prefix=x"], "only used with --format-only"),
        (["--format-only", "--eval-options", "imgfile_prefx=x"],
         "unknown key 'imgfile_prefx' (did you mean 'imgfile_prefix'?) in --eval-options (with --format-only)"),
        (["--format-only", "--eval-options", "to_label_id=yes"], "to_label_id must be True or False, got 'yes'"),
        (["--eval", "mIoU", "--cfg-options", "model.test_cfg.mod=slide"],
         "unknown key 'mod' (did you mean 'mode'?) in model.test_cfg"),
    ],
)
def test_bad_test_arguments_are_reported(trained, capsys, args, message):
    config, checkpoint = trained
    code, _, err = run_cli(["test", str(config), str(checkpoint), *args], capsys)
    assert code == 1 and message in err


def test_image_demo_writes_overlay_and_label_png_in_the_cityscapes_palette(trained, tmp_path):
    config, checkpoint = trained
    out = tmp_path / "demo_pred.png"
    proc = subprocess.run(
        [sys.executable, str(REPO / "image_demo.py"), str(DEMO_IMAGE), str(config), str(checkpoint), str(out),
         "--device", "cpu", "--palette", "cityscapes", "--opacity", "1.0"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    overlay = cv2.imread(str(out))[:, :, ::-1]
    assert overlay.shape == cv2.imread(str(DEMO_IMAGE)).shape == (512, 1024, 3)
    labels = Image.open(tmp_path / "demo_pred_labels.png")
    assert labels.mode == "P" and labels.size == (1024, 512)
    palette = get_palette("cityscapes")
    np.testing.assert_array_equal(np.array(labels.getpalette()[: 19 * 3]).reshape(19, 3), palette)
    np.testing.assert_array_equal(overlay, palette[np.array(labels)])  # opacity 1: pure class colours


def test_demo_on_a_folder_skips_a_broken_image_and_writes_uncertainty_maps(trained, tmp_path, capsys):
    config, checkpoint = trained
    images = tmp_path / "pictures"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (50, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "sub" / "b.jpg"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    code, _, err = run_cli(["demo", str(images), str(config), str(checkpoint), str(out), "--uncertainty", "--steps", "2"], capsys)
    assert code == 1 and "broken.png" in err  # the others are still written
    assert cv2.imread(str(out / "a.png")).shape == (50, 80, 3)
    labels = Image.open(out / "sub" / "b_labels.png")  # no --palette: the dataset's, as in the overlay
    assert labels.mode == "P" and labels.size == (40, 40)
    np.testing.assert_array_equal(np.array(labels.getpalette()[: 19 * 3]).reshape(19, 3), get_palette("cityscapes"))
    heat = cv2.imread(str(out / "a_entropy.png"))
    assert heat.shape[0] == 50 and heat.shape[1] > 80  # heatmap plus colour bar
    assert (out / "sub" / "b_disagreement.png").is_file()


def test_demo_refuses_an_unwritable_output_before_loading_the_model(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    code, _, err = run_cli(["demo", str(image), "missing_config.py", "missing.pth", str(blocker / "out.png")], capsys)
    assert code == 1 and "a_file" in err and "missing_config" not in err


def test_demo_applies_the_configs_speedups_section_and_flags_win(trained, tmp_path, capsys, monkeypatch):
    import ddpseg.runtime

    config, checkpoint = trained
    derived = tmp_path / "with_speedups.py"
    derived.write_text(f"_base_ = [{str(config)!r}]\nspeedups = dict(channels_last=True, amp='bf16')\n")
    seen, amps = [], []
    real_autocast = ddpseg.runtime.autocast_for
    # recorded, not run: compiling the encoder would take most of a minute
    monkeypatch.setattr(ddpseg.runtime, "speed_up_encoder", lambda model, **kw: seen.append(kw) or model)
    monkeypatch.setattr(ddpseg.runtime, "autocast_for", lambda device, amp: amps.append(amp) or real_autocast(device, amp))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    for extra in ([], ["--compile", "--amp", "fp16"]):
        code, _, err = run_cli(["demo", str(image), str(derived), str(checkpoint), str(tmp_path / "out.png"),
                                "--steps", "1", *extra], capsys)
        assert code == 0, err
    assert seen == [dict(channels_last=True, compile=False), dict(channels_last=True, compile=True)]
    assert amps == ["bf16", "fp16"]


def test_demo_refuses_to_overwrite_an_input_image_before_loading_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("single.png", "keep_labels.png", "m2/a.png", "m2/a.jpg", "m2/sub/b.png"):
        Path(name).parent.mkdir(exist_ok=True)
        cv2.imwrite(name, rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    os.symlink("single.png", "link.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.*") if not p.is_symlink()}
    cases = [
        (["single.png", "single.png"], "output single.png would overwrite the input image single.png"),
        (["single.png", "elsewhere/../single.png"], "output elsewhere/../single.png would overwrite the input image single.png"),
        (["single.png", "--out-file", "link.png"], "output link.png would overwrite the input image single.png"),
        (["keep_labels.png", "keep.png"], "output keep_labels.png would overwrite the input image keep_labels.png"),
        (["m2", "m2"], "output m2/sub/b.png would overwrite the input image m2/sub/b.png"),  # a.* get a.png.png, a.jpg.png
        (["m2", str(tmp_path / "m2" / "sub" / ".."), "--uncertainty"], "would overwrite the input image m2/sub/b.png"),
    ]
    for (image, *rest), message in cases:
        code, stdout, err = run_cli(["demo", image, "missing_config.py", "missing.pth", *rest], capsys)
        assert code == 1 and message in err and "missing_config" not in err and err.count("\n") == 1, (rest, err)
        assert err.endswith("give another output " + ("folder\n" if image == "m2" else "file\n"))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.*") if not p.is_symlink()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep_labels.png", "link.png", "m2", "single.png"]


def test_demo_refuses_an_output_extension_opencv_cannot_write_before_loading_the_model(tmp_path, capsys):
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    proc = subprocess.run(
        [sys.executable, str(REPO / "image_demo.py"), str(image), "missing_config.py", "missing.pth", str(tmp_path / "out.xyz")],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert f"output file {tmp_path / 'out.xyz'}: cannot write images with extension '.xyz'" in proc.stderr
    assert "use one of .png .jpg .jpeg" in proc.stderr and ".tif" in proc.stderr and "missing_config" not in proc.stderr
    code, _, err = run_cli(["demo", str(image), "missing_config.py", "missing.pth", "--out-file", str(tmp_path / "o.XYZ")], capsys)
    assert code == 1 and "extension '.XYZ'" in err and "missing_config" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_a_malformed_palette_file_is_reported_before_loading_the_model(tmp_path, capsys):
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    palette = tmp_path / "bad.txt"
    palette.write_text("1 2 3\n4 5\n")
    argv = ["demo", str(image), "missing_config.py", "missing.pth", str(tmp_path / "o.png"), "--palette", str(palette)]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and f"palette file {palette}, line 2" in err and "missing_config" not in err


def test_demo_palette_file_with_too_few_colours_names_the_file_and_both_counts(trained, tmp_path, capsys):
    config, checkpoint = trained
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    palette = tmp_path / "five.json"
    palette.write_text(json.dumps([[i, i, i] for i in range(5)]))
    argv = ["demo", str(image), str(config), str(checkpoint), str(tmp_path / "o.png"), "--palette", str(palette)]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"palette file {palette} has 5 colours but 19 classes were asked for: 19 colours are needed" in err
    assert not (tmp_path / "o.png").exists()


def test_demo_on_a_folder_gives_images_sharing_a_stem_distinct_outputs(trained, tmp_path, capsys):
    config, checkpoint = trained
    images = tmp_path / "m2"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (16, 24), "a.jpg": (20, 12), "b.png": (12, 12)}
    for name, size in sizes.items():
        cv2.imwrite(str(images / name), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    out = tmp_path / "out"
    code, stdout, err = run_cli(["demo", str(images), str(config), str(checkpoint), str(out), "--steps", "1"], capsys)
    assert code == 0, err
    assert f"wrote 3 of 3 overlays under {out}" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "a.jpg.png", "a.jpg_labels.png", "a.png.png", "a.png_labels.png", "b.png", "b_labels.png",
    ]  # only the colliding images keep their extension
    for name, size in sizes.items():
        overlay = out / (f"{name}.png" if name.startswith("a.") else name)
        assert cv2.imread(str(overlay)).shape == (*size, 3)
        labels = Path(str(overlay.with_suffix("")) + "_labels.png")
        assert Image.open(labels).size == size[::-1]


def test_folder_output_names_change_only_for_images_whose_files_would_clash(tmp_path):
    from ddpseg.commands.demo import _folder_overlays, _output_files

    src, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", "a.jpg", "a.png.png", "x.png", "x_labels.png", "y.png", "y_entropy.jpg", "sub/a.png", "B.PNG", "B.png"]
    images = [src / name for name in names]

    def planned(uncertainty):
        overlays = _folder_overlays(src, images, out, uncertainty)
        files = [path for overlay in overlays for path in _output_files(overlay, uncertainty)]
        assert len(set(files)) == len(files)  # nothing written twice
        return [str(path.relative_to(out)) for path in overlays]

    assert planned(False) == [
        "a.png.png", "a.jpg.png", "a.png.png.png",  # a.png.png clashes with a.png's renamed overlay in turn
        "x.png.png", "x_labels.png.png",  # x's label PNG would have been x_labels.png's overlay
        "y.png", "y_entropy.png",  # no heatmaps without --uncertainty: no clash
        "sub/a.png", "B.PNG.png", "B.png.png",
    ]
    assert planned(True)[5:7] == ["y.png.png", "y_entropy.jpg.png"]


# --- a wrong --device or a file that is not a checkpoint: one line naming it, no traceback ------------------------
@pytest.mark.parametrize("command", [
    ["test", "missing_config.py", "missing.pth", "--eval", "mIoU"],
    ["demo", str(DEMO_IMAGE), "missing_config.py", "missing.pth"],
])
@pytest.mark.parametrize("device, message", [
    ("gpu", "--device gpu: not a device; expected cpu, cuda or cuda:N"),
    ("cuda", "--device cuda: CUDA is not available here (torch "),
    ("cuda:1", "--device cuda:1: CUDA is not available here"),
])
def test_a_device_that_is_not_here_is_one_clear_line(tmp_path, capsys, monkeypatch, command, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # the demo's default output lands here, if anything
    code, _, err = run_cli([*command, "--device", device], capsys)
    assert code == 1 and err.startswith(f"ddpseg {command[0]}: error: {message}") and err.count("\n") == 1, err
    assert "missing" not in err and "Traceback" not in err


def test_image_demo_and_tools_test_report_cuda_without_cuda_in_one_line(tmp_path):
    env = _env(CUDA_VISIBLE_DEVICES="")  # no GPU visible, whatever the machine has
    for script, args in ((REPO / "image_demo.py", [str(DEMO_IMAGE), "cfg.py", "ck.pth", str(tmp_path / "o.png")]),
                         (REPO / "tools" / "test.py", ["cfg.py", "ck.pth", "--eval", "mIoU"])):
        proc = subprocess.run([sys.executable, str(script), *args, "--device", "cuda"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 1, proc.stderr
        assert "--device cuda: CUDA is not available here" in proc.stderr and "use --device cpu" in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _not_a_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pth"
    data = {"text": b"notes about the run\n", "random": bytes(range(7, 255)) * 3, "empty": b"",
            "markdown": (REPO / "README.md").read_bytes()}[kind]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, message", [
    ("text", "is not a PyTorch checkpoint (neither a zip archive nor a pickle"),
    ("random", "is not a PyTorch checkpoint (neither a zip archive nor a pickle"),
    ("empty", "is empty (0 bytes)"),
    ("markdown", "is not a PyTorch checkpoint (neither a zip archive nor a pickle"),
])
def test_test_and_demo_name_a_file_that_is_not_a_checkpoint(trained, tmp_path, capsys, kind, message):
    config, _ = trained
    bad = _not_a_checkpoint(tmp_path, kind)
    for argv in (["test", str(config), str(bad), "--eval", "mIoU", "--out", str(tmp_path / "m.json")],
                 ["demo", str(DEMO_IMAGE), str(config), str(bad), str(tmp_path / "out.png")]):
        code, _, err = run_cli(argv, capsys)
        assert code == 1 and f"{bad} {message}" in err and err.count("\n") == 1, err
        assert "weights_only" not in err and "IndexError" not in err and "KeyError" not in err


def test_tools_test_names_a_text_file_given_as_checkpoint(trained, tmp_path):
    config, _ = trained
    notes = _not_a_checkpoint(tmp_path, "text")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "test.py"), str(config), str(notes), "--eval", "mIoU"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 1
    assert proc.stderr == (f"ddpseg test: error: {notes} is not a PyTorch checkpoint (neither a zip archive nor a "
                           "pickle, the two formats torch.save writes); it is a text file starting with "
                           "'notes about the run'\n")


# --- under torchrun: one GPU per process -------------------------------------------------------------------------
def test_under_torchrun_each_test_process_takes_its_own_gpu(monkeypatch):
    """``tools/dist_test.sh`` without ``--device`` on a 2-GPU machine: ``cuda``, which each process resolves to
    ``cuda:LOCAL_RANK``, not ``cuda:<--gpu-id>`` for all (every process on GPU 0: NCCL's "Duplicate GPU")."""
    from ddpseg.cli import build_parser
    from ddpseg.commands.test import _device
    from ddpseg.engine.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    args = build_parser().parse_args(["test", "c.py", "k.pth", "--eval", "mIoU", "--launcher", "pytorch"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _device(args) == "cuda"
    assert [resolve_device(_device(args), rank) for rank in (0, 1)] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: --gpu-id
    assert _device(args) == "cuda:0"
    args.gpu_id = 1
    assert _device(args) == "cuda:1"


def test_torchrun_without_launcher_option_still_joins_the_process_group(monkeypatch):
    """As ``ddpseg train``: torchrun's environment is enough; without it every process would test the whole set
    alone and all would write the same metrics file."""
    from ddpseg.engine import distributed

    class Joined(Exception):
        pass

    def init_distributed(device=None, timeout_s=1800.0):
        raise Joined(device)

    monkeypatch.setattr(distributed, "init_distributed", init_distributed)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = str(REPO / "configs" / "quickstart" / "ddp_convnext_mini_synthetic.py")
    with pytest.raises(Joined, match="^cpu$"):
        main(["test", config, "k.pth", "--eval", "mIoU", "--device", "cpu"])
