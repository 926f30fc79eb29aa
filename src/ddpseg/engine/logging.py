"""Training logs, written by rank 0 only.

* ``<work_dir>/<timestamp>.log``: a text log (also echoed to the console above the progress bar).
* ``<work_dir>/metrics.jsonl``: one JSON object per line,
  ``{"mode": "train", "iter", "lr", "loss", <each logged key>, "time", "data_time", "memory"}`` every
  ``log_config.interval`` iterations (values averaged over the interval, ``memory`` = peak CUDA MB, 0 on CPU)
  and ``{"mode": "val", "iter", <metrics>}`` after each evaluation.
* ``<work_dir>/tf_logs``: TensorBoard scalars, when ``torch.utils.tensorboard`` imports.
* a tqdm progress bar with loss, lr, it/s and ETA (on a terminal, unless disabled).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from ddpseg.atomic import atomic_write

LOGGER_NAME = "ddpseg"


class _TqdmHandler(logging.Handler):
    """Console output that does not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _drop_records_after(path: Path, iteration: int) -> int:
    """Rewrite ``path`` (atomically) without the records of iterations after ``iteration``: a resumed run
    writes them again. Returns how many were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            later = int(json.loads(line).get("iter", 0)) > iteration
        except (ValueError, TypeError, AttributeError):  # not a record of ours: keep it as it is
            later = False
        if not later:
            kept.append(line)
    if len(kept) < len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
    return len(lines) - len(kept)


class TrainLogger:
    """Everything the training loop reports; a silent no-op object on ranks other than 0.

    Use as a context manager (or call :meth:`close`) so the file handles are released.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        enabled: bool,
        max_iters: int,
        start_iter: int = 0,
        interval: int = 50,
        timestamp: Optional[str] = None,
        tensorboard: bool = True,
        progress: Optional[bool] = None,
    ) -> None:
        self.enabled = enabled
        self.max_iters = max_iters
        self.interval = max(1, int(interval))
        self.timestamp = timestamp or time.strftime("%Y%m%d_%H%M%S")
        self.work_dir = Path(work_dir)
        self._buffer: dict[str, list[float]] = defaultdict(list)
        self._memory = 0.0
        self._start_time = time.time()
        self._start_iter = start_iter
        self.logger = logging.getLogger(LOGGER_NAME)
        self._handlers: list[logging.Handler] = []
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.logger.setLevel(logging.INFO)
        formatter = logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s")
        self.log_file = self.work_dir / f"{self.timestamp}.log"
        for handler in (logging.FileHandler(self.log_file, encoding="utf-8"), _TqdmHandler()):
            handler.setFormatter(formatter)
            self.logger.addHandler(handler)
            self._handlers.append(handler)
        self.logger.propagate = False
        dropped = _drop_records_after(self.work_dir / "metrics.jsonl", start_iter) if start_iter > 0 else 0
        if dropped:
            self.info(f"metrics.jsonl: dropped {dropped} records after iteration {start_iter}, written by the "
                      "interrupted run past the checkpoint resumed from (its text log keeps them)")
        self._jsonl = open(self.work_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            self._tb = _open_tensorboard(self.work_dir / "tf_logs", self.logger)
        show_bar = sys.stderr.isatty() if progress is None else progress
        if show_bar:
            self._bar = tqdm(total=max_iters, initial=start_iter, dynamic_ncols=True, unit="it", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ text
    def info(self, message: str) -> None:
        if self.enabled:
            self.logger.info(message)

    def warning(self, message: str) -> None:
        if self.enabled:
            self.logger.warning(message)

    # ------------------------------------------------------------------------------------------ training
    def update(self, iteration: int, values: Mapping[str, float], lr: float) -> None:
        """Record the (rank-averaged) values of 1-based ``iteration``; writes a record every ``interval``."""
        if not self.enabled:
            return
        for key, value in values.items():
            if key == "memory":  # a running peak, reported as its latest value rather than averaged
                self._memory = float(value)
            else:
                self._buffer[key].append(float(value))
        if self._bar is not None:
            # postfix first: update() redraws the bar, so the values shown are this iteration's
            self._bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", lr=f"{lr:.3e}", refresh=False)
            self._bar.update(1)
        if iteration % self.interval == 0:
            self._flush_train(iteration, lr)

    def _flush_train(self, iteration: int, lr: float) -> None:
        averaged = {k: sum(v) / len(v) for k, v in self._buffer.items() if v}
        self._buffer.clear()
        timing = {k: averaged.pop(k) for k in ("time", "data_time") if k in averaged}
        memory = self._memory
        record = {"mode": "train", "iter": iteration, "lr": lr, **averaged, **timing, "memory": int(memory)}
        self._write_record(record)
        done = iteration - self._start_iter
        eta_s = (time.time() - self._start_time) / max(done, 1) * (self.max_iters - iteration)
        eta = str(datetime.timedelta(seconds=int(eta_s)))
        losses = ", ".join(f"{k}: {v:.4f}" for k, v in averaged.items())
        times = ", ".join(f"{k}: {v:.3f}" for k, v in timing.items())
        self.info(
            f"Iter [{iteration}/{self.max_iters}]\tlr: {lr:.3e}, eta: {eta}, {times}, memory: {int(memory)}, {losses}"
        )

    def log_val(self, iteration: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._write_record({"mode": "val", "iter": iteration, **scalars})
        self.info(f"Iter(val) [{iteration}]\t" + ", ".join(f"{k}: {v:.4f}" for k, v in scalars.items()))

    def _write_record(self, record: Mapping[str, Any]) -> None:
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            mode, step = record["mode"], record["iter"]
            for key, value in record.items():
                if key not in ("mode", "iter") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{mode}/{key}", value, step)
            self._tb.flush()

    # ------------------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()

    def __enter__(self) -> "TrainLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_tensorboard(log_dir: Path, logger: logging.Logger) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        logger.info("tensorboard is not installed; skipping TensorBoard logging")
        return None
    return SummaryWriter(log_dir=str(log_dir))
