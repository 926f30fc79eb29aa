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

__all__ = [
    "convert_official_state_dict",
    "is_official_state_dict",
    "read_checkpoint",
    "load_model_weights",
    "save_ddpseg_checkpoint",
    "CheckpointError",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model (the message lists the keys)."""


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


def _unwrap(obj: Any, path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """(state_dict, meta) from the containers people save: {'state_dict', 'meta'}, {'model'}, or a plain dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors or a {{'state_dict': ...}} checkpoint, got {type(obj).__name__}")
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta"), Mapping) else {}
    for wrapper in ("state_dict", "model", "module"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state, meta


def read_checkpoint(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read weights and metadata from ``.safetensors`` or ``.pth``/``.pt`` without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
        return state, meta
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({err}). ddpseg never unpickles code; "
            "convert the file to a plain state dict or safetensors first."
        ) from None
    return _unwrap(obj, path)


def load_model_weights(model: nn.Module, path_or_state: Union[PathLike, Mapping[str, Tensor]], strict: bool = True) -> Dict[str, Any]:
    """Load a checkpoint (official or ddpseg layout) into ``model``; returns the checkpoint's metadata.

    Auxiliary-head weights missing on either side are tolerated (that head only matters for training).
    Any other missing, unexpected or mis-shaped key raises :class:`CheckpointError` listing them.
    """
    if isinstance(path_or_state, Mapping):
        state, meta, source = dict(path_or_state), {}, "state dict"
    else:
        state, meta = read_checkpoint(path_or_state)
        source = str(path_or_state)
    if is_official_state_dict(state):
        state = convert_official_state_dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("auxiliary_head.")]
    unexpected = [k for k in state if k not in own and not k.startswith("auxiliary_head.")]
    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or mis_shaped):
        lines = [f"{source} does not fit the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        if mis_shaped and any("decode_head.conv_seg" in m or "label_encoder" in m for m in mis_shaped):
            lines.append("  (the number of classes differs between the checkpoint and the config)")
        raise CheckpointError("\n".join(lines))
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)
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
