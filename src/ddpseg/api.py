"""Building a ready-to-use model from a config and a checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from .config import Config, ConfigError
from .convert import CheckpointError, load_model_weights, read_checkpoint
from .models.build import build_model
from .models.segmentor import DDP
from .runtime import parse_device, tune_cpu_allocator
from .safe_config import parse_config_text

__all__ = ["init_model", "load_config"]

PathLike = Union[str, os.PathLike]


def load_config(config: Union[PathLike, Mapping[str, Any], Config], cfg_options: Optional[Mapping[str, Any]] = None) -> Config:
    """A :class:`Config` from a path, a dict or a Config, with ``--cfg-options``-style overrides applied."""
    if isinstance(config, Config):
        cfg = config.copy()
    elif isinstance(config, Mapping):
        cfg = Config(dict(config))
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    if "model" not in cfg:
        raise ConfigError(f"config {getattr(cfg, 'filename', None) or '<dict>'} has no 'model' section")
    return cfg


def _config_from_checkpoint(checkpoint: PathLike) -> Config:
    """The config embedded in a ddpseg safetensors checkpoint, parsed (never executed)."""
    _, meta = read_checkpoint(checkpoint)
    if "config" not in meta:
        raise ConfigError(
            f"{checkpoint} carries no config; pass one: init_model(CONFIG, '{checkpoint}') "
            "(for official .pth files use the config of the same name under configs/)"
        )
    return Config(parse_config_text(meta["config"], str(checkpoint)), filename=str(checkpoint))


def resolve_checkpoint(checkpoint: PathLike) -> Path:
    """A training work dir, its ``latest.json`` or an ``iter_N.json`` → the weights file they describe."""
    from .engine.checkpoint import resolve_checkpoint_meta

    path = Path(checkpoint)
    if path.is_dir() or path.suffix == ".json":
        meta = resolve_checkpoint_meta(path)
        if meta is None:
            raise CheckpointError(f"{path} describes no ddpseg checkpoint: pass a checkpoint file")
        path = meta.with_suffix(".safetensors")
    return path


def init_model(
    config: Union[PathLike, Mapping[str, Any], Config, None],
    checkpoint: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    cfg_options: Optional[Mapping[str, Any]] = None,
) -> DDP:
    """Build the segmentor of ``config`` and load ``checkpoint`` (official ``.pth`` or ddpseg ``.safetensors``).

    ``config`` may be ``None`` when the checkpoint is a ddpseg one that carries its config. ``checkpoint``
    may also be a training work dir (its latest checkpoint) or a checkpoint's ``.json`` metadata file. The model is
    returned in eval mode on ``device`` with ``model.cfg`` (the full config) and, when known,
    ``model.class_names`` / ``model.palette`` from the checkpoint's metadata. ``device`` is checked first
    (:func:`ddpseg.runtime.parse_device`): a string that names no device, or CUDA where there is none, raises
    :class:`ddpseg.runtime.DeviceError`.
    """
    tune_cpu_allocator()
    device = parse_device(device, option="device")  # before any work: a clear error for 'gpu', cuda without CUDA
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(checkpoint)
    if config is None:
        if checkpoint is None:
            raise ConfigError("init_model needs a config, a checkpoint that carries one, or both")
        cfg = _config_from_checkpoint(checkpoint)
        if cfg_options:
            cfg.merge_from_dict(dict(cfg_options))
    else:
        cfg = load_config(config, cfg_options)
    model = build_model(cfg.model)
    meta: Dict[str, Any] = {}
    if checkpoint is not None:
        meta = load_model_weights(model, checkpoint)
    model.cfg = cfg
    model.class_names = _meta_list(meta, "CLASSES")
    model.palette = _meta_list(meta, "PALETTE")
    if model.class_names is not None and len(model.class_names) != model.num_classes:
        raise CheckpointError(
            f"{checkpoint} was trained for {len(model.class_names)} classes but the config has {model.num_classes}"
        )
    return model.to(device).eval()


def _meta_list(meta: Mapping[str, Any], key: str) -> Optional[list]:
    value = meta.get(key)
    if isinstance(value, str):  # safetensors metadata holds strings
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if value is None and isinstance(meta.get("meta"), str):
        try:
            value = json.loads(meta["meta"]).get(key)
        except (json.JSONDecodeError, AttributeError):
            value = None
    return list(value) if isinstance(value, (list, tuple)) else None
