"""From a config to a finished training run; what ``ddpseg train``, ``tools/train.py`` and ``ddpseg quickstart`` share.

mmseg's ``tools/train.py`` + ``train_segmentor`` in one flat function, :func:`run_training`:
check the config → join the torchrun group → seed (shared seed; ``+ rank`` with ``diff_seed``) → build the model
(with its ImageNet backbone unless weights come from a checkpoint) → ``load_from`` weights → datasets → this
rank's training iterator and the periodic evaluation → :func:`ddpseg.engine.trainer.train` → check that every process
ended with the same parameters.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

import ddpseg
from ddpseg.config import Config, ConfigError, check_keys
from ddpseg.convert import convert_official_state_dict, is_official_state_dict
from ddpseg.data.build import build_dataset
from ddpseg.data.loader import make_train_loader_fn
from ddpseg.engine.checkpoint import (
    LATEST_NAME,
    CheckpointError,
    PathLike,
    resolve_checkpoint_meta,
    describe_mismatch,
    find_latest,
    load_checkpoint,
    load_weights,
    state_dict_mismatch,
)
from ddpseg.engine.distributed import all_gather_objects, all_ranks_ok, init_distributed
from ddpseg.engine.evaluate import evaluate_dataset
from ddpseg.engine.outputs import OutputError, check_output_dir
from ddpseg.engine.rng import seed_everything
from ddpseg.engine.settings import parse_settings
from ddpseg.engine.trainer import train
from ddpseg.evaluation.metrics import ALLOWED_METRICS
from ddpseg.models.build import build_model
from ddpseg.runtime import speedup_settings

__all__ = ["check_train_config", "default_work_dir", "load_initial_weights", "parameters_agree", "run_training"]

REQUIRED_SECTIONS = ("model", "data", "optimizer", "lr_config", "runner")
DATA_KEYS = ("samples_per_gpu", "workers_per_gpu", "train", "val", "test",
             "train_dataloader", "val_dataloader", "test_dataloader")
TRAIN_LOADER_KEYS = ("samples_per_gpu", "workers_per_gpu", "drop_last", "shuffle", "persistent_workers")
# mmseg's EvalHook arguments that mean something here, or nothing in a single-pass iteration-based evaluation.
EVALUATION_KEYS = ("interval", "metric", "save_best", "rule", "by_epoch", "pre_eval", "efficient_test",
                   "gpu_collect", "tmpdir")
# Top-level names of mmseg configs, to catch a misspelt section (``evalution``) that would silently do nothing.
KNOWN_TOP_LEVEL = (*REQUIRED_SECTIONS, "optimizer_config", "checkpoint_config", "evaluation", "log_config",
                   "load_from", "resume_from", "work_dir", "workflow", "dist_params", "log_level", "cudnn_benchmark",
                   "find_unused_parameters", "custom_imports", "fp16", "seed", "gpu_ids", "device", "norm_cfg",
                   "train_cfg", "test_cfg", "total_iters", "speedups")


def default_work_dir(config: Union[PathLike, Config]) -> Path:
    """``cfg.work_dir`` if the config sets one, else ``./work_dirs/<config file name without .py>`` (mmseg)."""
    if isinstance(config, Config) and config.get("work_dir"):
        return Path(config.work_dir)
    name = config.filename if isinstance(config, Config) else str(config)
    return Path("work_dirs") / Path(name or "ddpseg").stem


def check_train_config(cfg: Config) -> None:
    """Fail before any work for a config training cannot use: missing sections, unknown keys in ``data`` and
    ``evaluation``, an unsupported schedule or optimizer setting (and warn about near-misses of section names)."""
    where = cfg.filename or "<config>"
    missing = [s for s in REQUIRED_SECTIONS if s not in cfg]
    if missing:
        raise ConfigError(f"{where}: no {', '.join(repr(s) for s in missing)} section; training needs "
                          f"{', '.join(REQUIRED_SECTIONS)}")
    for key in cfg:
        if key not in KNOWN_TOP_LEVEL:
            close = difflib.get_close_matches(key, KNOWN_TOP_LEVEL, n=1, cutoff=0.85)
            if close and close[0] not in cfg:
                warnings.warn(f"{where}: top-level key '{key}' is not read by training; did you mean '{close[0]}'?",
                              stacklevel=2)
    check_keys(cfg.data, DATA_KEYS, "data")
    if "train" not in cfg.data:
        raise ConfigError(f"{where}: data has no 'train' dataset")
    check_keys(cfg.data.get("train_dataloader") or {}, TRAIN_LOADER_KEYS, "data.train_dataloader")
    evaluation = cfg.get("evaluation") or {}
    check_keys(evaluation, EVALUATION_KEYS, "evaluation")
    unknown = [m for m in _metrics(evaluation) if m not in ALLOWED_METRICS]
    if unknown:
        raise ConfigError(f"evaluation.metric: unknown metric(s) {unknown}; supported: {', '.join(ALLOWED_METRICS)}")
    try:
        parse_settings(cfg)
    except (KeyError, TypeError) as err:  # the engine's messages name the section
        raise ConfigError(f"{where}: {err}") from None


def _metrics(evaluation: Mapping[str, Any]) -> list[str]:
    metric = evaluation.get("metric", "mIoU")
    return [metric] if isinstance(metric, str) else list(metric)


def _to_ddpseg_names(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official DDP checkpoints (mmseg key names) are renamed; ddpseg checkpoints pass unchanged."""
    return convert_official_state_dict(state_dict) if is_official_state_dict(state_dict) else state_dict


def _refuse_url(path: PathLike, option: str) -> None:
    if str(path).startswith(("http://", "https://")):
        raise ConfigError(f"{option} is a URL ({path}); ddpseg never downloads at run time. Download the file and "
                          f"pass its local path (--{option.replace('_', '-')} PATH)")


def load_initial_weights(model: nn.Module, path: PathLike) -> dict[str, Any]:
    """Load ``load_from`` weights (an official ``.pth``, a ddpseg checkpoint or ``.safetensors``) into ``model``,
    all keys and shapes strictly; a mismatch names the keys (and says when the class count differs)."""
    _refuse_url(path, "load_from")
    checkpoint = load_checkpoint(path)
    state = _to_ddpseg_names(checkpoint["state_dict"], model)
    missing, unexpected, mis_shaped = state_dict_mismatch(model.state_dict(), state)
    if missing or unexpected or mis_shaped:
        report = describe_mismatch(missing, unexpected, mis_shaped)
        message = f"load_from {path} does not fit {type(model).__name__}:\n{report}"
        seg = state.get("decode_head.conv_seg.weight")
        if seg is not None and seg.shape[0] != getattr(model, "num_classes", seg.shape[0]):
            message += (f"\n  the checkpoint predicts {seg.shape[0]} classes, the config {model.num_classes} "
                        "(model.decode_head.num_classes / model.auxiliary_head.num_classes)")
        raise CheckpointError(message)
    load_weights(model, state)
    return checkpoint


def parameters_agree(model: nn.Module) -> str:
    """SHA-256 of the model's parameters, checked equal on every process (raises otherwise). Buffers are left
    out: BatchNorm statistics stay per-process, as in mmseg (``broadcast_buffers=False``)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    digests = all_gather_objects(digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"the processes ended with different parameters: {digests}")
    return str(digests[0])


def _checkpoint_seed(path: PathLike) -> Optional[int]:
    """The shared seed stored in a ddpseg checkpoint's metadata (None for other formats)."""
    meta_path = resolve_checkpoint_meta(Path(path))
    if meta_path is None:
        return None
    try:
        seed = json.loads(meta_path.read_text(encoding="utf-8")).get("meta", {}).get("seed")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not read checkpoint metadata {meta_path}: {err}") from err
    return int(seed) if seed is not None else None


def _say(message: str, main: bool) -> None:
    if main:
        print(message, file=sys.stderr, flush=True)


def _refuse_to_overwrite_a_run(work_dir: Path, resume: Optional[PathLike], load_from: Optional[PathLike]) -> None:
    """A new run (no resume) in a work dir that holds another run's checkpoints would overwrite and prune them."""
    if resume is not None or not work_dir.is_dir():
        return
    try:
        latest = find_latest(work_dir)
    except CheckpointError:  # a broken pointer still marks a run that is there
        latest = work_dir / LATEST_NAME
    if latest is None:
        return
    hint = "" if load_from is not None else ", start from its weights with --load-from CKPT"
    raise OutputError(f"work dir {work_dir} already holds a training run (latest checkpoint: {latest.name}); a new "
                      f"run there would overwrite it. Continue it with --resume{hint}, or pass another --work-dir")


def run_training(
    cfg: Config,
    *,
    work_dir: Optional[PathLike] = None,
    resume: Optional[PathLike] = None,
    load_from: Optional[PathLike] = None,
    seed: Optional[int] = None,
    diff_seed: bool = False,
    deterministic: bool = False,
    amp: Optional[str] = None,
    channels_last: bool = False,
    compile: bool = False,
    device: Optional[str] = None,
    validate: bool = True,
    progress: Optional[bool] = None,
    tensorboard: bool = True,
    print_eval_tables: bool = False,
) -> nn.Module:
    """Train the model ``cfg`` describes on ``cfg.data.train``; returns the trained bare model (train mode).

    Args:
        cfg: a full training config (``Config.fromfile`` + ``--cfg-options``).
        work_dir: checkpoints and logs (default: :func:`default_work_dir`).
        resume: a checkpoint to continue exactly, or ``'auto'`` (the work dir's latest; a fresh start if none).
            Default: ``cfg.resume_from``.
        load_from: weights to start from (official ``.pth`` or ddpseg); default ``cfg.load_from``. Ignored when
            resuming.
        seed: shared seed; default: the resumed checkpoint's, else a random one drawn on rank 0 (mmseg).
        diff_seed: seed each process with ``seed + rank`` (the data order still uses ``seed``).
        deterministic: deterministic cuDNN / PyTorch algorithms.
        amp, channels_last, compile: autocast dtype (``'bf16'`` / ``'fp16'``), NHWC encoder, compiled encoder;
            each given one wins over the config's ``speedups`` section (see :func:`ddpseg.runtime.speedup_settings`;
            a legacy ``fp16`` section means ``'fp16'``).
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (default: CUDA when available); under torchrun each
            process takes ``cuda:LOCAL_RANK``.
        validate: evaluate on ``cfg.data.val`` every ``evaluation.interval`` iterations (``save_best``).
        progress, tensorboard: see :func:`ddpseg.engine.trainer.train`.
        print_eval_tables: print the per-class tables of each evaluation (rank 0).
    """
    check_train_config(cfg)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(cfg)
    resume = resume if resume is not None else cfg.get("resume_from")
    load_from = load_from if load_from is not None else cfg.get("load_from")
    speedups = speedup_settings(cfg, amp=amp, channels_last=channels_last, compile=compile)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = init_distributed(device)
    main = info.rank == 0

    if resume is not None and str(resume) == "auto":
        resume = find_latest(work_dir) if work_dir.is_dir() else None
        if resume is None:
            _say(f"no checkpoint in {work_dir} to resume from: starting a new run", main)
    if resume is not None:
        _refuse_url(resume, "resume_from")
        stored_seed = _checkpoint_seed(resume)
        if seed is None:
            seed = stored_seed
        elif stored_seed is not None and stored_seed != seed:
            warnings.warn(f"--seed {seed} differs from the resumed run's seed {stored_seed}: the data order will "
                          "not continue the interrupted run exactly", stacklevel=2)
    error: Optional[Exception] = None
    if main:
        try:
            _refuse_to_overwrite_a_run(work_dir, resume, load_from)
            check_output_dir(work_dir, "work dir")
            cfg.dump(work_dir / (Path(cfg.filename).name if cfg.filename else "config.py"))
        except (OSError, ConfigError) as err:
            error = err
    if not all_ranks_ok(error is None):  # all processes stop together rather than wait for rank 0
        raise error or OutputError(f"rank 0 could not prepare the work dir {work_dir}")
    seed = seed_everything(seed, diff_seed=diff_seed, deterministic=deterministic)

    weights_from_checkpoint = resume is not None or load_from is not None
    model = build_model(cfg.model, load_pretrained=not weights_from_checkpoint)
    meta: dict[str, Any] = {"exp_name": Path(cfg.filename).name if cfg.filename else None,
                            "ddpseg_version": ddpseg.__version__}
    if resume is None and load_from is not None:
        load_initial_weights(model, load_from)
        meta["load_from"] = str(load_from)
        _say(f"loaded weights from {load_from}", main)

    train_set = build_dataset(cfg.data.train)
    if train_set.num_classes != model.num_classes:
        raise ConfigError(f"data.train has {train_set.num_classes} classes but the model predicts "
                          f"{model.num_classes} (model.decode_head.num_classes)")
    meta.update(CLASSES=list(train_set.CLASSES), PALETTE=[list(c) for c in train_set.PALETTE])
    loader_cfg = {**{k: cfg.data[k] for k in ("samples_per_gpu", "workers_per_gpu") if k in cfg.data},
                  **dict(cfg.data.get("train_dataloader") or {})}
    if "samples_per_gpu" not in loader_cfg:
        raise ConfigError(f"{cfg.filename or '<config>'}: data.samples_per_gpu is not set")
    loader_fn = make_train_loader_fn(
        train_set, int(loader_cfg["samples_per_gpu"]), int(loader_cfg.get("workers_per_gpu", 0)),
        rank=info.rank, world_size=info.world_size, drop_last=bool(loader_cfg.get("drop_last", True)),
    )

    eval_fn = None
    evaluation = cfg.get("evaluation") or {}
    if validate and int(evaluation.get("interval", -1)) > 0:
        if "val" not in cfg.data:
            raise ConfigError(f"{cfg.filename or '<config>'}: evaluation.interval is set but data has no 'val' "
                              "dataset (add one, or train with --no-validate)")
        val_set = build_dataset(cfg.data.val, dict(test_mode=True))
        val_workers = int((cfg.data.get("val_dataloader") or {}).get("workers_per_gpu", 0))
        metrics = _metrics(evaluation)

        def eval_fn(model: nn.Module, iteration: int) -> dict[str, Any]:
            return evaluate_dataset(model, val_set, seed=seed, metrics=metrics, progress=False, workers=val_workers,
                                    print_tables=print_eval_tables)

    model = train(
        model, cfg, loader_fn, work_dir=work_dir, seed=seed, resume=resume, amp=speedups.amp, device=device,
        channels_last=speedups.channels_last, compile=speedups.compile,
        eval_fn=eval_fn, meta=meta, tensorboard=tensorboard, progress=progress,
    )
    if info.distributed:
        digest = parameters_agree(model)
        _say(f"parameters identical on all {info.world_size} processes (sha256 {digest[:16]})", main)
    return model
