import importlib.util
import json
import warnings

import pytest
import torch

from engine_toys import SimulatedKill, build_toy, make_loader_fn, scores_eval_fn, toy_config
from ddpseg.config import ConfigError
from ddpseg.engine.checkpoint import CheckpointError, load_checkpoint
from ddpseg.engine.trainer import NonFiniteLossError, parse_losses, train

SCORES = {4: 0.5, 8: 0.7, 12: 0.6, 16: 0.9}


def run(cfg, work_dir, **kwargs):
    kwargs.setdefault("tensorboard", False)
    kwargs.setdefault("progress", False)
    loader_fn = kwargs.pop("loader_fn", make_loader_fn())
    return train(build_toy(cfg), cfg, loader_fn, work_dir=work_dir, seed=3, **kwargs)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_interrupted_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    # Dropout (global RNG), random augmentation (loader), warm-up, grad clipping, an eval that draws random numbers.
    cfg = toy_config(max_iters=8)
    eval_fn = scores_eval_fn(SCORES)
    straight = run(cfg, tmp_path / "straight", eval_fn=eval_fn)

    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "resumed", eval_fn=eval_fn, loader_fn=make_loader_fn(kill_at=5))
    assert load_checkpoint(tmp_path / "resumed")["iter"] == 4
    resumed = run(cfg, tmp_path / "resumed", eval_fn=eval_fn, resume="auto")
    assert_same_weights(straight, resumed)
    straight_state = load_checkpoint(tmp_path / "straight", with_training_state=True)["training_state"]
    resumed_state = load_checkpoint(tmp_path / "resumed", with_training_state=True)["training_state"]
    assert torch.equal(straight_state["optimizer"]["state"][0]["exp_avg"], resumed_state["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(straight_state["rng"][0]["torch"], resumed_state["rng"][0]["torch"])


def test_a_failing_evaluation_loses_no_training_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    cfg = toy_config(max_iters=12)
    straight = run(cfg, tmp_path / "straight", eval_fn=scores_eval_fn(SCORES))
    good = scores_eval_fn(SCORES)

    def failing_at_8(model, iteration):
        if iteration == 8:
            raise OSError("val image 3: truncated or corrupt image file")
        return good(model, iteration)

    with pytest.raises(OSError, match="truncated"):
        run(cfg, tmp_path / "resumed", eval_fn=failing_at_8)
    kept = load_checkpoint(tmp_path / "resumed")  # the checkpoint due at 8 was written before evaluating
    assert kept["iter"] == 8 and kept["meta"]["hook_msgs"]["best_iter"] == 4
    log = next((tmp_path / "resumed").glob("*.log")).read_text()
    assert "evaluation at iteration 8 failed; checkpoint iter_8 holds the training so far" in log
    resumed = run(cfg, tmp_path / "resumed", eval_fn=good, resume="auto")
    assert_same_weights(straight, resumed)


def test_a_checkpoint_at_an_evaluation_iteration_records_that_evaluation(tmp_path):
    run(toy_config(max_iters=8), tmp_path, eval_fn=scores_eval_fn(SCORES))
    hook_msgs = load_checkpoint(tmp_path / "iter_8.json")["meta"]["hook_msgs"]
    assert (hook_msgs["best_iter"], hook_msgs["best_score"]) == (8, 0.7)  # saved again after evaluating


def test_a_resumed_run_replaces_the_records_the_interrupted_run_wrote_past_its_checkpoint(tmp_path):
    cfg = toy_config(max_iters=8)
    run(cfg, tmp_path / "straight", eval_fn=scores_eval_fn(SCORES))
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "resumed", eval_fn=scores_eval_fn(SCORES), loader_fn=make_loader_fn(kill_at=7))

    def records(work_dir):
        lines = (work_dir / "metrics.jsonl").read_text().splitlines()
        return [(r["mode"], r["iter"], r.get("loss"), r.get("mIoU")) for r in map(json.loads, lines)]

    assert ("train", 6) in [r[:2] for r in records(tmp_path / "resumed")]  # written past checkpoint iter_4
    run(cfg, tmp_path / "resumed", eval_fn=scores_eval_fn(SCORES), resume="auto")
    assert records(tmp_path / "resumed") == records(tmp_path / "straight")


def test_training_writes_logs_metrics_best_and_last_k_checkpoints(tmp_path):
    cfg = toy_config(max_iters=16, checkpoint_config=dict(by_epoch=False, interval=4, max_keep_ckpts=2))
    run(cfg, tmp_path, eval_fn=scores_eval_fn(SCORES), tensorboard=True, meta={"CLASSES": ("a", "b", "c")})
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["best_mIoU_iter_16.json", "iter_12.json", "iter_16.json", "latest.json"]
    best = load_checkpoint(tmp_path / "best_mIoU_iter_16.json")
    assert best["meta"]["hook_msgs"]["best_score"] == 0.9 and best["meta"]["CLASSES"] == ["a", "b", "c"]
    assert load_checkpoint(tmp_path / "iter_12.json")["meta"]["hook_msgs"]["best_iter"] == 8

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["mode"] == "train"]
    assert [r["iter"] for r in train_records] == list(range(2, 17, 2))
    for key in ("lr", "loss", "decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg", "grad_norm",
                "time", "data_time", "memory"):
        assert key in train_records[0], key
    first = train_records[0]
    assert first["loss"] == pytest.approx(first["decode.loss_ce"] + first["aux.loss_ce"], rel=1e-6)
    assert [(r["iter"], r["mIoU"]) for r in records if r["mode"] == "val"] == sorted(SCORES.items())
    assert len(list(tmp_path.glob("*.log"))) == 1
    if importlib.util.find_spec("tensorboard") is not None:  # an optional extra: logged as skipped without it
        assert list((tmp_path / "tf_logs").iterdir())
    else:
        assert "tensorboard is not installed" in next(tmp_path.glob("*.log")).read_text()


def test_non_finite_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_config(max_iters=8, checkpoint_config=dict(by_epoch=False, interval=2), evaluation=None)
    with pytest.raises(NonFiniteLossError, match=r"iteration 4.*iter_2\.json"):
        run(cfg, tmp_path, loader_fn=make_loader_fn(nan_at=3))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["iter"] == 2
    assert all(torch.isfinite(v.float()).all() for v in ckpt["state_dict"].values())


def test_fp16_skips_the_update_of_a_non_finite_loss_and_stops_after_a_streak(tmp_path, monkeypatch):
    """Under fp16 a non-finite loss is an overflow the grad scaler handles (mmcv's Fp16OptimizerHook): that update
    is skipped, the scale lowered, training goes on; bf16 and float32 still stop (test above)."""
    cfg = toy_config(max_iters=4, evaluation=None, model=dict(type="ToySegmentor", width=8, dropout=0.0, batchnorm=False))
    model = run(cfg, tmp_path / "skip", amp="fp16", loader_fn=make_loader_fn(nan_at=1))
    assert "iteration 2: non-finite loss under fp16 (nan), taken as an overflow" in next((tmp_path / "skip").glob("*.log")).read_text()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = load_checkpoint(tmp_path / "skip", with_training_state=True)
    assert state["iter"] == 4 and state["training_state"]["scaler"]["scale"] <= 2.0**15  # 2¹⁶, halved at least once
    monkeypatch.setattr("ddpseg.engine.trainer.FP16_OVERFLOW_STREAK_LIMIT", 1)
    with pytest.raises(NonFiniteLossError, match=r"iteration 2 \(1 in a row under fp16\)"):
        run(cfg, tmp_path / "stop", amp="fp16", loader_fn=make_loader_fn(nan_at=1))
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: "):
        run(cfg, tmp_path / "bf16", amp="bf16", loader_fn=make_loader_fn(nan_at=1))


def test_resume_refuses_a_checkpoint_of_another_model_config(tmp_path):
    run(toy_config(max_iters=4, evaluation=None), tmp_path)
    other = toy_config(max_iters=8, evaluation=None, model=dict(type="ToySegmentor", width=4, dropout=0.2))
    with pytest.raises(CheckpointError, match=r"model\.width: 8 in the checkpoint, 4 now") as info:
        run(other, tmp_path, resume="auto")
    assert "stem.weight: checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3)" in str(info.value)


def test_load_from_takes_weights_only_and_restarts_the_schedule(tmp_path):
    cfg = toy_config(max_iters=4, evaluation=None)
    first = run(cfg, tmp_path / "a")
    model = build_toy(cfg, seed=99)
    train(model, cfg, make_loader_fn(), work_dir=tmp_path / "b", load_from=tmp_path / "a" / "iter_4.json",
          max_iters=1, tensorboard=False, progress=False)
    assert not torch.equal(model.stem.weight, build_toy(cfg, seed=99).stem.weight)
    assert load_checkpoint(tmp_path / "b")["iter"] == 1
    torch.save({"stem.weight": first.stem.weight.detach()}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(11\)"):
        run(cfg, tmp_path / "c", load_from=tmp_path / "partial.pth")


def test_bf16_autocast_trains_on_cpu(tmp_path):
    cfg = toy_config(max_iters=2, evaluation=None)
    model = run(cfg, tmp_path, amp="bf16")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_evaluation_runs_under_the_training_autocast(tmp_path, amp):
    seen = []
    scores = scores_eval_fn(SCORES)

    def recording(model, iteration):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_grad_enabled()))
        return scores(model, iteration)

    run(toy_config(max_iters=4), tmp_path, amp=amp, eval_fn=recording)
    expected = {None: (False,), "bf16": (True, torch.bfloat16), "fp16": (True, torch.float16)}[amp]
    assert len(seen) == 1 and seen[0][: len(expected)] == expected and seen[0][2] is False


def test_fp16_resume_restores_the_grad_scaler_and_a_changed_amp_is_warned_about(tmp_path):
    cfg = toy_config(max_iters=8, evaluation=None)
    straight = run(cfg, tmp_path / "straight", amp="fp16")
    with pytest.raises(SimulatedKill):
        run(cfg, tmp_path / "resumed", amp="fp16", loader_fn=make_loader_fn(kill_at=5))
    stored = load_checkpoint(tmp_path / "resumed", with_training_state=True)["training_state"]
    assert stored["amp"] == "fp16" and stored["scaler"]["scale"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same amp: an exact continuation, no warning
        resumed = run(cfg, tmp_path / "resumed", amp="fp16", resume="auto")
    assert_same_weights(straight, resumed)
    ends = [load_checkpoint(tmp_path / d, with_training_state=True)["training_state"]["scaler"]
            for d in ("straight", "resumed")]
    assert ends[0] == ends[1]

    for amp, checkpoint_amp, message in [(None, "fp16", "amp: 'fp16' in the checkpoint, None now (its grad scaler"),
                                         ("fp16", None, "amp: None in the checkpoint, 'fp16' now")]:
        work_dir = tmp_path / f"from_{checkpoint_amp}"
        run(toy_config(max_iters=4, evaluation=None), work_dir, amp=checkpoint_amp)
        with pytest.warns(UserWarning, match="not an exact continuation") as record:
            run(cfg, work_dir, amp=amp, resume="auto")
        assert message in str(record[0].message)
    # a checkpoint written before amp was recorded: its grad scaler state tells fp16
    state_file = tmp_path / "straight" / "iter_8.state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["amp"]
    torch.save(state, state_file)
    with pytest.warns(UserWarning, match=r"amp: 'fp16' in the checkpoint, 'bf16' now"):
        run(toy_config(max_iters=9, evaluation=None), tmp_path / "straight", amp="bf16", resume="auto")


def test_fp16_loss_scale_as_mmcv_reads_it_static_dynamic_or_grad_scaler_arguments(tmp_path):
    def scale_after(name, **kwargs):
        run(toy_config(max_iters=4, evaluation=None), tmp_path / name, amp="fp16", **kwargs)
        return load_checkpoint(tmp_path / name, with_training_state=True)["training_state"]["scaler"]["scale"]

    assert scale_after("static", loss_scale=512.0) == 512.0  # never grows (nor shrinks: a step that overflows is skipped)
    assert scale_after("growing", loss_scale=dict(init_scale=2.0, growth_interval=1)) == 32.0  # doubles every step
    dynamic = scale_after("dynamic", loss_scale="dynamic")
    assert dynamic == scale_after("default") and dynamic in [65536.0 / 2**k for k in range(5)]  # halved per overflow
    for bad in (0, -1.0, "static", True, dict(init_scal=2.0)):
        with pytest.raises(ConfigError, match="fp16.loss_scale"):
            run(toy_config(max_iters=1), tmp_path / "bad", amp="fp16", loss_scale=bad)
    assert not (tmp_path / "bad").exists()


def test_unusable_work_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=str(blocker / "run")):
        run(toy_config(max_iters=2), blocker / "run")


def test_parse_losses_sums_only_loss_entries_like_mmseg():
    losses = {"decode.loss_ce": torch.tensor([1.0, 3.0]), "decode.acc_seg": torch.tensor(50.0),
              "aux.loss_ce": [torch.tensor(0.5), torch.tensor([0.25, 0.75])]}
    loss, log_vars = parse_losses(losses)
    assert loss.item() == pytest.approx(2.0 + 1.0)
    assert list(log_vars) == ["decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "loss"]
    with pytest.raises(ValueError, match="no entry"):
        parse_losses({"acc": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="'decode.loss_ce'"):
        parse_losses({"decode.loss_ce": 1.0})
