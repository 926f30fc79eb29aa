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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

import ddpseg
from ddpseg.config import Config, ConfigError, check_bool, check_int, check_keys
from ddpseg.convert import convert_official_state_dict, is_official_state_dict
from ddpseg.data.build import build_dataset
from ddpseg.data.datasets import DATASETS
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
from ddpseg.engine.lr_schedule import PolyLrSchedule
from ddpseg.engine.outputs import OutputError, check_output_dir
from ddpseg.engine.rng import seed_everything
from ddpseg.engine.settings import best_rule, parse_settings
from ddpseg.engine.trainer import check_loss_scale, train
from ddpseg.evaluation.metrics import ALLOWED_METRICS, result_keys
from ddpseg.models.build import build_model
from ddpseg.runtime import apply_tf32, speedup_settings

__all__ = ["check_train_config", "default_work_dir", "load_initial_weights", "parameters_agree", "run_training"]

REQUIRED_SECTIONS = ("model", "data", "optimizer", "lr_config", "runner")
DATA_KEYS = ("samples_per_gpu", "workers_per_gpu", "train", "val", "test",
             "train_dataloader", "val_dataloader", "test_dataloader")
TRAIN_LOADER_KEYS = ("samples_per_gpu", "workers_per_gpu", "drop_last", "shuffle", "persistent_workers")
# mmseg's EvalHook arguments that mean something here, or nothing in a single-pass iteration-based evaluation.
EVALUATION_KEYS = ("interval", "metric", "save_best", "rule", "by_epoch", "pre_eval", "efficient_test",
                   "gpu_collect", "tmpdir")
# Top-level names of mmseg configs that training (or mmseg's runtime) reads, to catch a misspelt section (``runer``,
# ``evalution``) that would silently do nothing: the base config's section would be used instead.
KNOWN_TOP_LEVEL = (*REQUIRED_SECTIONS, "optimizer_config", "checkpoint_config", "evaluation", "log_config",
                   "load_from", "resume_from", "work_dir", "workflow", "dist_params", "log_level", "cudnn_benchmark",
                   "find_unused_parameters", "custom_imports", "fp16", "seed", "gpu_ids", "device",
                   "train_cfg", "test_cfg", "total_iters", "speedups")
# Free variables of mmseg / DDP configs, used inside the file (``norm_cfg=norm_cfg``), never read by training.
# Never taken for misspelt sections, whatever the similarity (``checkpoint_file`` is near ``checkpoint_config``).
CONFIG_VARIABLES = ("norm_cfg", "backbone_norm_cfg", "ham_norm_cfg", "img_norm_cfg", "crop_size", "img_scale",
                    "data_root", "dataset_type", "train_pipeline", "test_pipeline", "val_pipeline",
                    "checkpoint_file", "checkpoint", "pretrained", "num_classes", "custom_hooks", "auto_resume",
                    "opencv_num_threads", "mp_start_method")
# How alike a name must be to a section name to be taken for its misspelling (difflib ratio): 'runer'/'runner'
# 0.91, 'evalution'/'evaluation' 0.95, 'optimiser'/'optimizer' 0.89; 'checkpoint_file'/'checkpoint_config' 0.81.
MISSPELLING_CUTOFF = 0.85


def default_work_dir(config: Union[PathLike, Config]) -> Path:
    """``cfg.work_dir`` if the config sets one, else ``./work_dirs/<config file name without .py>`` (mmseg)."""
    if isinstance(config, Config) and config.get("work_dir"):
        return Path(config.work_dir)
    name = config.filename if isinstance(config, Config) else str(config)
    return Path("work_dirs") / Path(name or "ddpseg").stem


def check_train_config(cfg: Config) -> None:
    """Fail before any work for a config training cannot use: missing sections, a misspelt top-level section
    (``runer``), a model config :func:`~ddpseg.models.build.build_model` refuses, unknown keys or wrongly typed
    values in ``data``, ``evaluation`` (also a ``save_best`` the metrics do not produce), ``runner``,
    ``checkpoint_config``, ``log_config``, ``optimizer``, ``lr_config`` and the legacy ``fp16`` section."""
    where = cfg.filename or "<config>"
    try:
        _check_sections(cfg)
    except ConfigError as err:
        raise type(err)(f"{where}: {err}") from None


def _check_sections(cfg: Config) -> None:
    missing = [s for s in REQUIRED_SECTIONS if s not in cfg]
    if missing:
        raise ConfigError(f"no {', '.join(repr(s) for s in missing)} section; training needs "
                          f"{', '.join(REQUIRED_SECTIONS)}")
    _check_top_level(cfg)
    _check_model(cfg.model)
    check_keys(cfg.data, DATA_KEYS, "data")
    if "train" not in cfg.data:
        raise ConfigError("data has no 'train' dataset")
    _check_loaders(cfg.data)
    evaluation = cfg.get("evaluation") or {}
    check_keys(evaluation, EVALUATION_KEYS, "evaluation")
    metric = evaluation.get("metric", "mIoU")
    if not (isinstance(metric, str) or (isinstance(metric, (list, tuple)) and metric
                                        and all(isinstance(m, str) for m in metric))):
        raise ConfigError(f"evaluation.metric must be a metric name or a list of them "
                          f"({', '.join(ALLOWED_METRICS)}), got {metric!r}")
    unknown = [m for m in _metrics(evaluation) if m not in ALLOWED_METRICS]
    if unknown:
        raise ConfigError(f"evaluation.metric: unknown metric(s) {unknown}; supported: {', '.join(ALLOWED_METRICS)}")
    if cfg.get("fp16") is not None:  # the legacy mixed-precision section (see speedup_settings)
        check_keys(cfg.fp16, ("loss_scale",), "fp16")
        check_loss_scale(cfg.fp16.get("loss_scale"))
    settings = parse_settings(cfg)  # runner, optimizer, optimizer_config, checkpoint_config, log_config, ...
    _check_save_best(cfg, settings.save_best, settings.rule)
    try:  # the schedule is built only after the model and the datasets: check its section now
        PolyLrSchedule.from_config(settings.lr_config, [float(settings.optimizer["lr"])], settings.max_iters)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _check_top_level(cfg: Config) -> None:
    """A top-level key that is not a known name but looks like one (``runer``, ``evalution``) is a misspelling:
    training would ignore it, and use the base config's section instead."""
    for key in cfg:
        if key in KNOWN_TOP_LEVEL or key in CONFIG_VARIABLES:
            continue
        close = difflib.get_close_matches(str(key), KNOWN_TOP_LEVEL, n=1, cutoff=MISSPELLING_CUTOFF)
        if close:
            outcome = (f"the '{close[0]}' of the config or its base would be used instead" if close[0] in cfg
                       else f"no '{close[0]}' would be set")
            raise ConfigError(f"unknown top-level key '{key}' (did you mean '{close[0]}'?); training does "
                              f"not read '{key}', so {outcome}")


def _check_model(model_cfg: Mapping[str, Any]) -> None:
    """Build the model on the meta device (no memory, no weights, no file read): a model config error (a wrong
    type, a neck that does not fit the backbone, ...) surfaces before the work dir and the datasets are set up.
    Anything else is left to the real build, which reports it the same way."""
    try:
        with torch.device("meta"):
            build_model(model_cfg)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - e.g. an init that needs real tensor values; the real build runs it
        pass


def _check_loaders(data: Mapping[str, Any]) -> None:
    """Batch sizes, worker counts and loader flags by type (``data.samples_per_gpu='two'``)."""
    check_keys(data.get("train_dataloader") or {}, TRAIN_LOADER_KEYS, "data.train_dataloader")
    for where, section in (("data", data), *((f"data.{name}", data.get(name) or {}) for name in
                                            ("train_dataloader", "val_dataloader", "test_dataloader"))):
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a dict, got {section!r}")
        if "samples_per_gpu" in section:
            check_int(section["samples_per_gpu"], f"{where}.samples_per_gpu", minimum=1)
        if "workers_per_gpu" in section:
            check_int(section["workers_per_gpu"], f"{where}.workers_per_gpu", minimum=0)
        for flag in ("drop_last", "shuffle", "persistent_workers"):
            if flag in section:
                check_bool(section[flag], f"{where}.{flag}")


def _check_save_best(cfg: Config, save_best: Optional[str], rule: Optional[str]) -> None:
    """``evaluation.save_best`` must be 'auto' or a key the configured metrics return (mmseg's EvalHook), with a
    rule that can be inferred (mmseg refuses e.g. 'mDice' without ``rule``)."""
    if save_best is None or save_best == "auto":
        return
    metrics = _metrics(cfg.get("evaluation") or {})
    summary, per_class = result_keys(metrics)
    prefix, dot, name = save_best.partition(".")
    choices = f"'auto', {', '.join(repr(k) for k in summary)} or a per-class key '<{'|'.join(per_class)}>.<class>'"
    if dot and prefix in per_class:
        classes = _val_class_names(cfg)
        if classes is not None and name not in classes:
            raise ConfigError(f"evaluation.save_best={save_best!r}: the validation set has no class {name!r}; "
                              f"its classes: {', '.join(map(str, classes))}")
    elif save_best not in summary:
        close = difflib.get_close_matches(save_best, summary, n=1, cutoff=0.6)
        close += [k for k in summary if k.lower() == save_best.lower()]
        hint = f" (did you mean '{close[-1]}'?)" if close else ""
        raise ConfigError(f"evaluation.save_best={save_best!r}{hint} is not a result of evaluation.metric="
                          f"{metrics if len(metrics) > 1 else metrics[0]!r}; choose from {choices}")
    try:
        best_rule(save_best, rule)
    except ValueError as err:
        raise ConfigError(f"evaluation.save_best={save_best!r}: {err}") from None


def _val_class_names(cfg: Config) -> Optional[Sequence[str]]:
    """The class names of ``data.val`` when the config alone tells them (None otherwise)."""
    val = cfg.data.get("val")
    if not isinstance(val, Mapping):
        return None
    classes = val.get("classes")
    if classes is None:
        classes = getattr(DATASETS.get(val.get("type")), "CLASSES", None)
    return list(classes) if isinstance(classes, (list, tuple)) else None


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


# the parameters whose shape follows the number of classes (the classifiers and the label embedding)
CLASS_SIZED_KEYS = ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias", "auxiliary_head.conv_seg.weight",
                    "auxiliary_head.conv_seg.bias", "label_encoder.embedding.weight")


def load_initial_weights(model: nn.Module, path: PathLike) -> dict[str, Any]:
    """Load ``load_from`` weights (an official ``.pth``, a ddpseg checkpoint or ``.safetensors``) into ``model``.

    Keys and shapes must match, with one exception: a checkpoint of another class count (fine-tuning a published
    model on your dataset) loads everything but the class-sized parameters, which keep their fresh
    initialisation, with a warning naming them (the original's non-strict ``load_checkpoint`` skips them too).
    Any other mismatch names the keys."""
    _refuse_url(path, "load_from")
    checkpoint = load_checkpoint(path)
    state = _to_ddpseg_names(checkpoint["state_dict"], model)
    missing, unexpected, mis_shaped = state_dict_mismatch(model.state_dict(), state)
    mis_shaped_keys = {entry.split(":")[0] for entry in mis_shaped}
    if mis_shaped and not missing and not unexpected and mis_shaped_keys <= set(CLASS_SIZED_KEYS):
        seg = state.get("decode_head.conv_seg.weight")
        if seg is not None and seg.shape[0] != getattr(model, "num_classes", seg.shape[0]):
            warnings.warn(f"load_from {path}: the checkpoint predicts {seg.shape[0]} classes, the config "
                          f"{model.num_classes}; {', '.join(sorted(mis_shaped_keys))} keep their fresh "
                          "initialisation, everything else is loaded", stacklevel=2)
            model.load_state_dict({k: v for k, v in state.items() if k not in mis_shaped_keys}, strict=False)
            return checkpoint
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
    tf32: Optional[bool] = None,
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
            a legacy ``fp16`` section means ``'fp16'``, its ``loss_scale`` the fp16 loss scaling).
        tf32: TF32 for CUDA float32 matrix products and convolutions (``None``: the config's
            ``speedups.tf32``, else PyTorch's defaults; see :func:`ddpseg.runtime.apply_tf32`).
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
    speedups = speedup_settings(cfg, amp=amp, channels_last=channels_last, compile=compile, tf32=tf32)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = init_distributed(device)
    apply_tf32(speedups.tf32, info.device)
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
        pin_memory=info.device.type == "cuda",  # not on a CPU run: pinning would open a CUDA context on GPU 0
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
        loss_scale=(cfg.get("fp16") or {}).get("loss_scale"),
        channels_last=speedups.channels_last, compile=speedups.compile,
        eval_fn=eval_fn, meta=meta, tensorboard=tensorboard, progress=progress,
    )
    if info.distributed:
        digest = parameters_agree(model)
        _say(f"parameters identical on all {info.world_size} processes (sha256 {digest[:16]})", main)
    return model
