import builtins
import json

import pytest

from ddpseg.engine.logging import TrainLogger


def read_records(work_dir):
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_records_average_over_the_interval_and_val_records_follow(tmp_path):
    with TrainLogger(tmp_path, enabled=True, max_iters=4, interval=2, tensorboard=False, progress=False) as log:
        log.update(1, {"decode.loss_ce": 1.0, "loss": 1.0, "time": 0.2, "data_time": 0.1}, lr=0.5)
        log.update(2, {"decode.loss_ce": 3.0, "loss": 3.0, "time": 0.4, "data_time": 0.3, "memory": 12.7}, lr=0.25)
        log.log_val(2, {"mIoU": 0.5, "IoU.per_class": [0.1, 0.9]})
        log.update(3, {"decode.loss_ce": 5.0, "loss": 5.0, "time": 0.1, "data_time": 0.0}, lr=0.125)
    records = read_records(tmp_path)
    assert records[0] == pytest.approx(
        {"mode": "train", "iter": 2, "lr": 0.25, "decode.loss_ce": 2.0, "loss": 2.0, "time": 0.3, "data_time": 0.2,
         "memory": 12}
    )
    assert records[1] == {"mode": "val", "iter": 2, "mIoU": 0.5}  # non-scalar metrics stay out of the JSON lines
    assert len(records) == 2  # iteration 3 is not a logging iteration
    text = next(tmp_path.glob("*.log")).read_text()
    assert "Iter [2/4]" in text and "Iter(val) [2]" in text


def test_logger_of_other_ranks_writes_nothing(tmp_path):
    with TrainLogger(tmp_path, enabled=False, max_iters=2, interval=1, progress=False) as log:
        log.update(1, {"loss": 1.0}, lr=0.1)
        log.info("hello")
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_is_skipped(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with TrainLogger(tmp_path, enabled=True, max_iters=2, interval=1, tensorboard=True, progress=False) as log:
        log.update(1, {"loss": 1.0}, lr=0.1)
    assert not (tmp_path / "tf_logs").exists()
    assert "skipping TensorBoard" in next(tmp_path.glob("*.log")).read_text()


def test_progress_bar_shows_the_loss_and_lr_of_the_iteration_it_counts(tmp_path, monkeypatch):
    import io
    import sys

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with TrainLogger(tmp_path, enabled=True, max_iters=2, interval=10, tensorboard=False, progress=True) as log:
        log._bar.mininterval, log._bar.miniters, log._bar.dynamic_miniters = 0, 1, False  # redraw at every update
        log.update(1, {"loss": 1.5}, lr=0.5)
        first = stream.getvalue()
        log.update(2, {"loss": 2.5}, lr=0.25)
        second = stream.getvalue()[len(first):]
    assert "1/2" in first and "loss=1.5000" in first and "lr=5.000e-01" in first
    assert "2/2" in second and "loss=2.5000" in second and "lr=2.500e-01" in second
