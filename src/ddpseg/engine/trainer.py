"""Iteration-based training: one flat loop in :func:`train` (mmseg's ``IterBasedRunner`` + default hooks).

Per iteration ``i`` (0-based; ``N = i + 1`` iterations are done afterwards, the number logs and files use):
batch ``i`` → lr of step ``i`` → ``model.forward_train`` → total loss = sum of the entries whose key contains
``loss`` → log values averaged over ranks → non-finite check → backward → optional grad clipping → step →
log (every ``log_config.interval``) → evaluation (every ``evaluation.interval``, may save ``best_*``) →
checkpoint (every ``checkpoint_config.interval`` and at the end).

Data-iterator protocol
----------------------
``train_loader_fn(start_iter: int, seed: int) -> Iterator[dict]`` is called once per run. The iterator must
yield, forever, the batches of iterations ``start_iter, start_iter + 1, ...`` for *this* rank (shard with
``ddpseg.engine.distributed.get_rank()/get_world_size()``) as ``{'img': float (B,3,H,W), 'gt_semantic_seg':
long (B,1,H,W), 'img_metas': list}``. For exact resumption, the batch of iteration ``k`` on rank ``r`` must be a
function of ``(seed, k, r, world_size)`` only: sample order from generators seeded by ``seed`` (+ epoch), and
random augmentation seeded per sample from ``(seed, global sample position)`` — not from the process-global RNGs,
whose use inside DataLoader workers or prefetching cannot be replayed. ``seed`` is the shared seed (the same on all
ranks). The trainer calls ``train_loader_fn`` *before* restoring the checkpoint's RNG states, so draws made while
constructing the iterator do not matter. Optionally the iterator may offer ``state_dict()`` (plain tensors /
containers) and ``load_state_dict(state)``; that state is saved with each checkpoint and handed back after
``train_loader_fn(start_iter, seed)`` on resume.
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddpseg.config import ConfigError, check_keys
from ddpseg.runtime import AMP_CHOICES, speed_up_encoder
from ddpseg.safe_config import UnsafeConfigError, parse_config_text
from ddpseg.engine.checkpoint import (
    CheckpointError,
    PathLike,
    check_resumable,
    config_diff,
    find_latest,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    remove_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    update_latest,
)
from ddpseg.engine.distributed import (
    all_gather_objects,
    all_ranks_ok,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_int,
    init_distributed,
    local_rank_device_ids,
    prepare_batchnorm,
)
from ddpseg.engine.logging import TrainLogger
from ddpseg.engine.lr_schedule import PolyLrSchedule, initial_lrs
from ddpseg.engine.optimizer import build_optimizer
from ddpseg.engine.rng import get_rng_state, set_rng_state
from ddpseg.engine.settings import TrainSettings, best_rule, config_text, model_section, parse_settings

TrainLoaderFn = Callable[[int, int], Iterator[Mapping[str, Any]]]
EvalFn = Callable[[nn.Module, int], Mapping[str, Any]]
AMP_DTYPES = AMP_CHOICES  # the names --amp takes
GRAD_SCALER_KEYS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the bad update."""


# fp16 with a grad scaler: a non-finite loss is taken as an fp16 overflow and its update skipped (as mmcv's
# Fp16OptimizerHook lets the scaler do); this many in a row mean the run diverged
FP16_OVERFLOW_STREAK_LIMIT = 20


# ---------------------------------------------------------------------------------------------- one step
def parse_losses(losses: Mapping[str, Any]) -> tuple[torch.Tensor, "OrderedDict[str, torch.Tensor]"]:
    """mmseg's ``_parse_losses``: mean of each entry (a list of tensors sums their means); the total loss is the
    sum of the entries whose key contains ``'loss'``; returned log values include it as ``'loss'``."""
    log_vars: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in losses.items():
        if isinstance(value, torch.Tensor):
            log_vars[name] = value.mean()
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            log_vars[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f"forward_train returned {name!r} as {type(value).__name__}; expected a tensor or list")
    terms = [value for name, value in log_vars.items() if "loss" in name]
    if not terms:
        raise ValueError(f"forward_train returned no entry whose key contains 'loss': {list(losses)}")
    loss = sum(terms[1:], terms[0])
    log_vars["loss"] = loss
    return loss, log_vars


class _TrainForward(nn.Module):
    """Routes ``forward`` to ``forward_train`` so DistributedDataParallel sees the training computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor) -> Mapping[str, Any]:
        return self.model.forward_train(img, gt_semantic_seg)


def _batch_to(batch: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"the training iterator yielded a {type(batch).__name__}; expected a dict batch")
    tensors = []
    for key in ("img", "gt_semantic_seg"):
        value = batch.get(key)
        if not isinstance(value, torch.Tensor):
            raise KeyError(f"training batch needs a tensor '{key}'; it has keys {sorted(batch)}")
        tensors.append(value.to(device, non_blocking=True))
    return tensors[0], tensors[1]


def _resolve_resume(resume: Optional[PathLike], work_dir: Path) -> Optional[PathLike]:
    """``'auto'`` means the work dir's latest checkpoint, or a fresh start when it has none (mmseg's auto-resume)."""
    if resume is None or str(resume) != "auto":
        return resume
    return find_latest(work_dir)


# ---------------------------------------------------------------------------------------------- the loop
def train(
    model: nn.Module,
    cfg: Mapping[str, Any],
    train_loader_fn: TrainLoaderFn,
    *,
    work_dir: PathLike,
    seed: int = 0,
    resume: Optional[PathLike] = None,
    load_from: Optional[PathLike] = None,
    amp: Optional[str] = None,
    loss_scale: Any = None,
    channels_last: bool = False,
    compile: bool = False,
    device: Union[str, torch.device] = "cpu",
    eval_fn: Optional[EvalFn] = None,
    max_iters: Optional[int] = None,
    meta: Optional[Mapping[str, Any]] = None,
    weights_filter: Optional[Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]] = None,
    param_name_fn: Optional[Callable[[str], str]] = None,
    tensorboard: bool = True,
    progress: Optional[bool] = None,
) -> nn.Module:
    """Train ``model`` (built and seeded by the caller) as ``cfg`` describes; returns the bare trained model.

    Args:
        model: has ``forward_train(img, gt_semantic_seg) -> dict[str, Tensor]`` (losses and metrics).
        cfg: mmseg-style config (dict or Config): ``optimizer``, ``optimizer_config``, ``lr_config``, ``runner``,
            ``checkpoint_config``, ``evaluation``, ``log_config``, ``find_unused_parameters``, ``model``.
        train_loader_fn: see the data-iterator protocol in this module's docstring.
        work_dir: checkpoints, logs and metrics go here (created on rank 0).
        seed: the shared seed handed to ``train_loader_fn`` and stored in ``meta``.
        resume: a checkpoint (see :func:`~ddpseg.engine.checkpoint.load_checkpoint`) or ``'auto'`` (the work
            dir's ``latest``, fresh start if none): restores weights, optimizer, schedule, grad scaler, iteration,
            RNG states and data position. Takes precedence over ``load_from``.
        load_from: weights only (e.g. for the self-aligned fine-tune), strict unless ``weights_filter`` adapts.
        amp: None, ``'bf16'`` or ``'fp16'`` (autocast; fp16 adds a GradScaler).
        loss_scale: fp16's loss scaling, as the legacy ``fp16`` section's ``loss_scale`` (see
            :func:`check_loss_scale`); None: dynamic, from torch's defaults.
        channels_last, compile: the model's image encoder in NHWC layout / through ``torch.compile``
            (:func:`ddpseg.runtime.speed_up_encoder`; parameter names and checkpoints are unchanged).
        device: ``'cpu'`` or ``'cuda'`` (each torchrun process uses ``cuda:LOCAL_RANK``).
        eval_fn: ``eval_fn(model, iteration) -> metrics`` called on every rank in eval mode, no grad, under the
            ``amp`` autocast, every ``evaluation.interval`` iterations; rank 0's metrics are logged and drive
            ``save_best``.
        max_iters: overrides ``runner.max_iters`` (also the poly schedule's length).
        meta: mmseg-style metadata stored in each checkpoint (CLASSES, PALETTE, env_info, exp_name, ...).
        weights_filter: ``(state_dict, model) -> state_dict`` applied to ``load_from`` weights (key conversion).
        param_name_fn: names that ``optimizer.paramwise_cfg.custom_keys`` match (see ``build_param_groups``).
        tensorboard, progress: TensorBoard scalars; tqdm bar (None: only on a terminal).
    """
    settings = parse_settings(cfg, max_iters)
    if amp not in (None, *AMP_DTYPES):
        raise ValueError(f"amp={amp!r} is not supported; expected None, 'bf16' or 'fp16'")
    check_loss_scale(loss_scale)
    info = init_distributed(device)
    device, main = info.device, info.rank == 0
    work_dir = Path(work_dir)
    if main:
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(f"cannot create work dir {work_dir}: {err.strerror or err}") from err
        remove_stale_temporaries(work_dir)
    barrier()
    if settings.cudnn_benchmark and device.type == "cuda" and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True

    model = prepare_batchnorm(model, distributed=info.distributed, device=device).to(device)
    if channels_last or compile:
        speed_up_encoder(model, channels_last=channels_last, compile=compile)
    model_config = model_section(cfg)
    resume = _resolve_resume(resume, work_dir)
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume, with_training_state=True)
        check_resumable(checkpoint, model, model_config)
        model.load_state_dict(checkpoint["state_dict"])
        changed = (_changed_training_settings(checkpoint.get("config"), cfg)
                   + _changed_amp(checkpoint["training_state"], amp))
        if changed and main:
            warnings.warn(f"resuming from {checkpoint['path']} with training settings that differ from the run's, so "
                          "this is not an exact continuation:\n  " + "\n  ".join(changed[:12])
                          + (f"\n  ... {len(changed) - 12} more" if len(changed) > 12 else ""), stacklevel=2)
    elif load_from is not None:
        load_weights(model, load_from, filter_fn=weights_filter)

    optimizer = build_optimizer(model, settings.optimizer, param_name_fn=param_name_fn)
    schedule = PolyLrSchedule.from_config(settings.lr_config, initial_lrs(optimizer), settings.max_iters)
    scaler, static_scale = _grad_scaler(amp, loss_scale, device)
    start_iter, hook_msgs = 0, {}
    if checkpoint is not None:
        state = checkpoint["training_state"]
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_iter = int(checkpoint["iter"])
        hook_msgs = dict(checkpoint["meta"].get("hook_msgs") or {})

    # Created before the RNG states are restored: draws made while building the iterator are overwritten.
    data_iter = iter(train_loader_fn(start_iter, seed))
    if checkpoint is not None:
        _restore_rank_states(checkpoint, data_iter, info.rank, info.world_size)

    step_module: nn.Module = _TrainForward(model)
    if info.distributed:
        step_module = DistributedDataParallel(
            step_module,
            device_ids=local_rank_device_ids(device),
            find_unused_parameters=settings.find_unused_parameters,
            **_no_forward_buffer_sync(),
        )
    autocast_dtype = AMP_DTYPES.get(amp) if amp else None
    base_meta = {**dict(meta or {}), **settings.checkpoint_meta, "seed": seed}

    def save(name: str, iteration: int, latest: bool) -> None:
        """Gather every rank's RNG/data state, write on rank 0, then fail together if rank 0 could not write."""
        rank_states = all_gather_objects({"rng": get_rng_state(), "data": _data_state(data_iter)})
        error: Optional[CheckpointError] = None
        if main:
            training_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "amp": amp,
                "rng": [s["rng"] for s in rank_states],
                "data": [s["data"] for s in rank_states],
                "world_size": info.world_size,
            }
            try:
                save_checkpoint(
                    work_dir, name, state_dict=model.state_dict(), iteration=iteration,
                    training_state=training_state, config_text=config_text(cfg), model_config=model_config,
                    meta={**base_meta, "iter": iteration, "hook_msgs": dict(hook_msgs)},
                )
                if latest:
                    update_latest(work_dir, name, iteration)
                    hook_msgs["last_ckpt"] = str(work_dir / f"{name}.json")
                    prune_checkpoints(work_dir, settings.max_keep_ckpts)
            except CheckpointError as err:
                error = err
        if not all_ranks_ok(error is None):
            raise error or CheckpointError(f"rank 0 failed to write checkpoint {name} in {work_dir}")

    with TrainLogger(
        work_dir, enabled=main, max_iters=settings.max_iters, start_iter=start_iter,
        interval=settings.log_interval, tensorboard=tensorboard, progress=progress,
    ) as log:
        if checkpoint is not None:
            log.info(f"resumed from {checkpoint['path']} at iteration {start_iter}")
        elif load_from is not None:
            log.info(f"loaded weights from {load_from}")
        log.info(f"training iterations {start_iter} -> {settings.max_iters}, work dir {work_dir}, "
                 f"world size {info.world_size}, device {device}, amp {amp}"
                 + (f", channels_last {channels_last}, compile {compile}" if channels_last or compile else ""))
        model.train()
        end = time.perf_counter()
        overflow_streak = 0
        for it in range(start_iter, settings.max_iters):
            iteration = it + 1
            batch = next(data_iter)
            data_time = time.perf_counter() - end
            lrs = schedule.apply(optimizer, it)
            img, gt = _batch_to(batch, device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses = step_module(img, gt)
            loss, log_vars = parse_losses(losses)
            values = all_reduce_mean(log_vars)
            if math.isfinite(values["loss"]):
                overflow_streak = 0
            elif scaler is not None and overflow_streak + 1 < FP16_OVERFLOW_STREAK_LIMIT:
                overflow_streak += 1
                log.info(f"iteration {iteration}: non-finite loss under fp16 ({values['loss']}), taken as an overflow: "
                         f"the grad scaler skips this update (loss scale {scaler.get_scale():g} before it)")
            else:
                streak = f" ({FP16_OVERFLOW_STREAK_LIMIT} in a row under fp16)" if scaler is not None else ""
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {iteration}{streak}: {values}; training stopped before the update. "
                    f"Last good checkpoint: {hook_msgs.get('last_ckpt', 'none saved in this run')}"
                )
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if settings.grad_clip is not None:
                params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
                if params:
                    values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, **settings.grad_clip))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update(static_scale)
            else:
                optimizer.step()
            values.update(time=time.perf_counter() - end, data_time=data_time)
            if iteration % log.interval == 0 and device.type == "cuda":
                values["memory"] = all_reduce_max(torch.cuda.max_memory_allocated(device) / 2**20)
            log.update(iteration, values, lrs[0])

            interval = settings.checkpoint_interval
            due = (interval > 0 and iteration % interval == 0) or (settings.save_last and iteration == settings.max_iters)
            evaluating = eval_fn is not None and settings.eval_interval > 0 and iteration % settings.eval_interval == 0
            if due and evaluating:
                # saved before evaluating too (mmcv's checkpoint hook runs before its eval hook): an evaluation
                # that fails (a bad validation image, out of memory) loses no training; saved again below
                save(f"iter_{iteration}", iteration, latest=True)
            if evaluating:
                try:
                    metrics = _evaluate(model, eval_fn, iteration, device, autocast_dtype)
                except Exception:
                    if due:
                        log.info(f"evaluation at iteration {iteration} failed; checkpoint iter_{iteration} holds "
                                 "the training so far (continue with --resume)")
                    raise
                log.log_val(iteration, metrics)
                name = _new_best_name(metrics, iteration, settings, hook_msgs, main)
                if name is not None:
                    previous = hook_msgs.get("best_ckpt")
                    hook_msgs["best_ckpt"] = str(work_dir / f"{name}.json")
                    save(name, iteration, latest=False)
                    if main:
                        if previous and Path(previous).name != f"{name}.json":
                            # only ever in this run's work dir: a run resumed elsewhere leaves the old dir alone
                            remove_checkpoint(work_dir, Path(previous).name[: -len(".json")])
                        log.info(f"best {hook_msgs['best_key']} {hook_msgs['best_score']:.4f}: saved {name}")
            if due:  # (again, after an evaluation: its hook_msgs then hold this evaluation's best score)
                save(f"iter_{iteration}", iteration, latest=True)
                log.info(f"saved checkpoint iter_{iteration}")
            end = time.perf_counter()
        log.info("training finished")
    return model


# what decides the training trajectory besides the model (which check_resumable enforces)
_TRAJECTORY_SECTIONS = ("optimizer", "optimizer_config", "lr_config", "runner", "fp16")
_TRAJECTORY_DATA_KEYS = ("samples_per_gpu", "train", "train_dataloader")


def _changed_training_settings(stored_text: Optional[str], cfg: Mapping[str, Any]) -> list[str]:
    """Differences in optimizer, schedule, runner and training data between a checkpoint's stored config and
    ``cfg`` (empty when the stored text is missing or not a plain config dump)."""
    if not stored_text:
        return []
    try:
        stored = parse_config_text(stored_text, "checkpoint config")
        current = parse_config_text(config_text(cfg), "current config")
    except UnsafeConfigError:
        return []
    changes = []
    for section in _TRAJECTORY_SECTIONS:
        changes += config_diff(stored.get(section), current.get(section), section)
    stored_data, current_data = stored.get("data") or {}, current.get("data") or {}
    for key in _TRAJECTORY_DATA_KEYS:
        changes += config_diff(stored_data.get(key), current_data.get(key), f"data.{key}")
    return changes


def check_loss_scale(loss_scale: Any, where: str = "fp16.loss_scale") -> None:
    """``loss_scale`` as mmcv's fp16 setting reads it: None or ``'dynamic'`` (dynamic scaling, torch's
    defaults), a number > 0 (a static scale: overflowing steps are skipped, the scale never changes) or a dict
    of GradScaler arguments (``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``,
    ``enabled``); a :class:`~ddpseg.config.ConfigError` naming ``where`` otherwise."""
    if loss_scale is None or loss_scale == "dynamic":
        return
    if isinstance(loss_scale, Mapping):
        check_keys(loss_scale, GRAD_SCALER_KEYS, where)
        return
    if isinstance(loss_scale, numbers.Real) and not isinstance(loss_scale, bool) and 0 < loss_scale < math.inf:
        return
    raise ConfigError(f"{where} must be 'dynamic', a number > 0 (a static scale) or a dict of GradScaler arguments "
                      f"({', '.join(GRAD_SCALER_KEYS)}), got {loss_scale!r}")


def _grad_scaler(
    amp: Optional[str], loss_scale: Any, device: torch.device
) -> tuple[Optional[torch.amp.GradScaler], Optional[float]]:
    """fp16's GradScaler and, for a static ``loss_scale``, the scale each ``update`` keeps; (None, None) otherwise."""
    if amp != "fp16":
        return None, None
    if loss_scale is None or loss_scale == "dynamic":
        return torch.amp.GradScaler(device.type), None
    if isinstance(loss_scale, Mapping):
        return torch.amp.GradScaler(device.type, **loss_scale), None
    return torch.amp.GradScaler(device.type, init_scale=float(loss_scale)), float(loss_scale)


def _changed_amp(state: Mapping[str, Any], amp: Optional[str]) -> list[str]:
    """The resumed run's autocast setting against this run's (a checkpoint written before ``amp`` was recorded:
    ``'fp16'`` where it holds a grad scaler's state, else not compared)."""
    if "amp" in state:
        stored = state["amp"]
    elif state.get("scaler"):
        stored = "fp16"
    else:
        return []
    if stored == amp:
        return []
    dropped = " (its grad scaler state is not used)" if stored == "fp16" else ""
    return [f"amp: {stored!r} in the checkpoint, {amp!r} now{dropped}"]


def _no_forward_buffer_sync() -> dict[str, bool]:
    """mmseg's ``broadcast_buffers=False``: buffers are synced when DDP is built, not at every forward. Newer
    PyTorch spells this ``forward_sync_buffers=False`` (its ``broadcast_buffers=False`` also skips the first sync)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _data_state(data_iter: Iterator[Any]) -> Any:
    state_dict = getattr(data_iter, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def _restore_rank_states(checkpoint: Mapping[str, Any], data_iter: Iterator[Any], rank: int, world_size: int) -> None:
    state = checkpoint["training_state"]
    rng_states, data_states = state["rng"], state.get("data") or []
    if len(rng_states) != world_size:
        raise CheckpointError(
            f"{checkpoint['path']} was saved by {len(rng_states)} processes, this run has {world_size}; "
            "exact resumption needs the same world size (use load_from to start a new run from its weights)"
        )
    set_rng_state(rng_states[rank])
    if data_states and data_states[rank] is not None:
        load_state_dict = getattr(data_iter, "load_state_dict", None)
        if not callable(load_state_dict):
            raise CheckpointError(
                f"{checkpoint['path']} holds a data-iterator state but the iterator has no load_state_dict()"
            )
        load_state_dict(data_states[rank])


def _evaluate(
    model: nn.Module, eval_fn: EvalFn, iteration: int, device: torch.device, autocast_dtype: Optional[torch.dtype]
) -> Mapping[str, Any]:
    """Run ``eval_fn`` without disturbing training: same BN stats on all ranks, RNG streams put back after. It
    runs under the training's autocast, as ``ddpseg test`` runs the same config's ``speedups.amp`` (and mmseg's
    fp16 model evaluated in fp16)."""
    broadcast_buffers(model)
    rng = get_rng_state()
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            metrics = eval_fn(model, iteration)
    finally:
        model.train()
        set_rng_state(rng)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"eval_fn returned a {type(metrics).__name__}; expected a dict of metrics")
    return metrics


def _new_best_name(
    metrics: Mapping[str, Any], iteration: int, settings: TrainSettings, hook_msgs: dict[str, Any], main: bool
) -> Optional[str]:
    """``best_<key>_iter_<N>`` when rank 0's metrics beat the best so far (recorded in ``hook_msgs``), else None.
    The decision is broadcast: saving the checkpoint is collective."""
    if settings.save_best is None:
        return None
    improved, key = False, str(settings.save_best)
    if main:
        if key == "auto":
            key = hook_msgs.get("best_key") or next(iter(metrics))
        if key not in metrics:
            raise KeyError(f"evaluation.save_best={settings.save_best!r} but eval_fn returned only {list(metrics)}")
        score = float(metrics[key])
        best = hook_msgs.get("best_score")
        improved = best is None or (score > best if best_rule(key, settings.rule) == "greater" else score < best)
        if improved:
            hook_msgs.update(best_key=key, best_score=score, best_iter=iteration)
    if not broadcast_int(int(improved)):
        return None
    # Only rank 0 writes files, so other ranks may not know the resolved key of save_best='auto'.
    return f"best_{key}_iter_{iteration}"
