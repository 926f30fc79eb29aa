"""Official DDP checkpoints (mmseg 0.x key names) → ddpseg, and loading any supported checkpoint safely.

Everything is read without executing pickled code: ``.pth`` through ``torch.load(weights_only=True)``,
``.safetensors`` through safetensors.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .atomic import atomic_write
from .engine.checkpoint import CheckpointError, load_checkpoint, load_weights

__all__ = [
    "convert_official_state_dict",
    "is_official_state_dict",
    "read_checkpoint",
    "load_model_weights",
    "save_ddpseg_checkpoint",
    "CheckpointError",
]

PathLike = Union[str, os.PathLike]




# official name pattern → ours; applied in order, first match wins, backbone keys are kept as they are
_RULES: List[Tuple[re.Pattern, str]] = [
    (re.compile(r"^embedding_table\.weight$"), "label_encoder.embedding.weight"),
    (re.compile(r"^transform\.conv\.(weight|bias)$"), r"transform.\1"),
    (re.compile(r"^time_mlp\.0\.weights$"), "time_mlp.sinusoidal.weights"),
    (re.compile(r"^time_mlp\.1\.(weight|bias)$"), r"time_mlp.fc1.\1"),
    (re.compile(r"^time_mlp\.3\.(weight|bias)$"), r"time_mlp.fc2.\1"),
    (re.compile(r"^neck\.0\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.weight$"), r"neck.fpn.\1.\2.conv.weight"),
    (re.compile(r"^neck\.0\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.bias$"), r"neck.fpn.\1.\2.conv.bias"),
    (re.compile(r"^neck\.0\.(lateral_convs|fpn_convs)\.(\d+)\.(gn|bn)\.(.+)$"), r"neck.fpn.\1.\2.\3.\4"),
    (re.compile(r"^neck\.1\.down\.conv\.(.+)$"), r"neck.merge.conv.conv.\1"),
    (re.compile(r"^neck\.1\.down\.(gn|bn)\.(.+)$"), r"neck.merge.conv.\1.\2"),
    (re.compile(r"^decode_head\.encoder\.layers\.(\d+)\.attentions\.0\.(.+)$"), r"decode_head.layers.\1.attn.\2"),
    (re.compile(r"^decode_head\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(.+)$"), r"decode_head.layers.\1.ffn.fc1.\2"),
    (re.compile(r"^decode_head\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(.+)$"), r"decode_head.layers.\1.ffn.fc2.\2"),
    (re.compile(r"^decode_head\.encoder\.layers\.(\d+)\.norms\.0\.(.+)$"), r"decode_head.layers.\1.norm1.\2"),
    (re.compile(r"^decode_head\.encoder\.layers\.(\d+)\.norms\.1\.(.+)$"), r"decode_head.layers.\1.norm2.\2"),
    (re.compile(r"^decode_head\.encoder\.layers\.(\d+)\.time_mlp\.1\.(.+)$"), r"decode_head.layers.\1.time_proj.\2"),
    (re.compile(r"^decode_head\.conv_seg\.(.+)$"), r"decode_head.conv_seg.\1"),
    (re.compile(r"^auxiliary_head\.convs\.(\d+)\.conv\.(.+)$"), r"auxiliary_head.convs.\1.conv.\2"),
    (re.compile(r"^auxiliary_head\.convs\.(\d+)\.bn\.(.+)$"), r"auxiliary_head.convs.\1.bn.\2"),
    (re.compile(r"^auxiliary_head\.conv_cat\.conv\.(.+)$"), r"auxiliary_head.conv_cat.conv.\1"),
    (re.compile(r"^auxiliary_head\.conv_cat\.bn\.(.+)$"), r"auxiliary_head.conv_cat.bn.\1"),
    (re.compile(r"^auxiliary_head\.conv_seg\.(.+)$"), r"auxiliary_head.conv_seg.\1"),
    (re.compile(r"^(backbone\..+)$"), r"\1"),
]

_OFFICIAL_MARKERS = ("embedding_table.weight", "transform.conv.weight")


def is_official_state_dict(keys) -> bool:
    """True when the keys use the original DDP (mmseg) names."""
    keys = set(keys)
    return any(marker in keys for marker in _OFFICIAL_MARKERS) or any(k.startswith("decode_head.encoder.") for k in keys)


def convert_key(key: str) -> str:
    """Our name for an official key; unknown keys come back unchanged (and are then reported as unexpected)."""
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return key


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename an original DDP state dict to ddpseg's names (values untouched, one to one)."""
    out: Dict[str, Any] = {}
    for key, value in state_dict.items():
        new = convert_key(key)
        if new in out:
            raise CheckpointError(f"two official keys map to {new!r}")
        out[new] = value
    return out


def _safetensors_header(path: Path) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"could not read weights {path}: {err}") from err


def read_checkpoint(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """(state_dict, meta) of any checkpoint :func:`ddpseg.engine.checkpoint.load_checkpoint` reads.

    ``meta`` gathers what describes the weights: mmseg's ``meta`` (CLASSES, PALETTE, ...), the safetensors
    header of a ddpseg file, and a training checkpoint's config text under ``'config'``.
    """
    ckpt = load_checkpoint(path)
    meta: Dict[str, Any] = dict(ckpt["meta"] or {})
    if ckpt["format"] == "safetensors":
        meta.update(_safetensors_header(Path(ckpt["path"])))
    if ckpt.get("config"):
        meta.setdefault("config", ckpt["config"])
    return ckpt["state_dict"], meta


def _fit_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Official names → ours; auxiliary-head weights absent on either side are tolerated (training-only head)."""
    if is_official_state_dict(state):
        state = convert_official_state_dict(state)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("auxiliary_head.")}
    for key, value in own.items():
        if key.startswith("auxiliary_head.") and key not in state:
            state[key] = value  # keep the model's own
    return state


def load_model_weights(model: nn.Module, path_or_state: Union[PathLike, Mapping[str, Tensor]], strict: bool = True) -> Dict[str, Any]:
    """Load a checkpoint (official or ddpseg layout, any format :func:`read_checkpoint` takes) into ``model``.

    Any missing, unexpected or mis-shaped key (auxiliary head aside) raises :class:`CheckpointError`
    listing them. Returns the checkpoint's metadata.
    """
    if isinstance(path_or_state, Mapping):
        state, meta, source = dict(path_or_state), {}, "<state dict>"
    else:
        (state, meta), source = read_checkpoint(path_or_state), str(path_or_state)
    try:
        load_weights(model, _fit_to_model(state, model), strict=strict, source_name=source)
    except CheckpointError as err:
        hint = ""
        if "decode_head.conv_seg" in str(err) or "label_encoder" in str(err):
            hint = "\n  (the number of classes differs between the checkpoint and the config?)"
        raise CheckpointError(f"{err}{hint}") from None
    return meta


def save_ddpseg_checkpoint(
    model_or_state: Union[nn.Module, Mapping[str, Tensor]],
    out: PathLike,
    config: Optional[Mapping[str, Any]] = None,
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``OUT.safetensors`` and, with a config, a readable ``OUT.py`` beside it; both atomically.

    The safetensors metadata carries the config text (read back by parsing, never by executing it, see
    :mod:`ddpseg.safe_config`) and ``meta`` (class names, palette, provenance) as JSON.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix == ".safetensors":
        out = out.with_suffix("")
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = dict(meta or {})
    metadata = {"format": "ddpseg", "meta": json.dumps(meta, default=str)}
    for key in ("CLASSES", "PALETTE"):
        if meta.get(key) is not None:
            metadata[key] = json.dumps(list(meta[key]), default=list)
    text = None
    if config is not None:
        from .config import Config

        text = (config if isinstance(config, Config) else Config(dict(config))).pretty_text
        metadata["config"] = text
    weights = out.parent / (out.name + ".safetensors")
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata=metadata))
    if text is not None:
        atomic_write(out.parent / (out.name + ".py"), lambda tmp: Path(tmp).write_text(text))
    return weights
