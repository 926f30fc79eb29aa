"""Reading pretrained backbone weights and loading them with a clear report.

The per-family renaming lives beside each backbone (``convnext.convert_pretrained``,
``swin.convert_pretrained``); this module holds what they share: opening ``.pth`` / ``.safetensors``
files safely, unwrapping training checkpoints, and loading a converted state dict into a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Mapping, Union

from torch import Tensor, nn

__all__ = [
    "LoadReport",
    "StateDictSource",
    "load_converted",
    "read_checkpoint",
    "read_source",
    "source_name",
    "unwrap_state_dict",
]

StateDictSource = Union[str, PathLike, Mapping[str, Any]]


def read_checkpoint(path: Union[str, PathLike]) -> dict[str, Any]:
    """Load a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file with ``weights_only=True``.

    Reads through :mod:`ddpseg.engine.checkpoint`, so a file that is empty, not a checkpoint, corrupt, or holds
    pickled objects beyond tensors raises its :class:`~ddpseg.engine.checkpoint.CheckpointError` naming the file;
    pickled code is never executed.
    """
    from ...engine.checkpoint import CheckpointError, load_safetensors, torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    obj = torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors (a state dict)")
    return obj


def unwrap_state_dict(obj: Mapping[str, Any], source: str = "state dict") -> dict[str, Tensor]:
    """The backbone's tensors from a checkpoint as released by mmcls/mmseg/official repos/timm.

    Takes ``obj['state_dict']`` or ``obj['model']`` when present, strips a ``module.`` prefix
    (DistributedDataParallel), and when any key starts with ``backbone.`` keeps only those keys,
    prefix removed (mmcls classifiers and full segmentors store the backbone that way).
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a mapping of tensors, got {type(obj).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise ValueError(f"{source}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def source_name(src: StateDictSource) -> str:
    """How a weight source is named in reports: its path, or ``<state dict>``."""
    return str(src) if isinstance(src, (str, PathLike)) else "<state dict>"


def read_source(src: StateDictSource) -> Mapping[str, Any]:
    """The checkpoint behind a path, or the given mapping unchanged."""
    return read_checkpoint(src) if isinstance(src, (str, PathLike)) else src


@dataclass
class LoadReport:
    """What happened when pretrained weights were loaded into a backbone."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model entry was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.resized:
            lines.append(f"  resized (bicubic) {len(self.resized)}: {_short(self.resized)}")
        if self.missing:
            lines.append(f"  missing in checkpoint {len(self.missing)}: {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint {len(self.unexpected)}: {_short(self.unexpected)}")
        for key, got, want in self.mismatched:
            lines.append(f"  shape mismatch {key}: checkpoint {got} vs model {want} (not loaded)")
        return "\n".join(lines)


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit})" if len(keys) > limit else "")


def load_converted(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool, source: str, resized: list[str]
) -> LoadReport:
    """Copy the entries of an already converted ``state_dict`` whose names and shapes fit ``model``.

    With ``strict=True`` any missing, unexpected or mis-shaped entry raises a ``ValueError`` carrying
    the full report, and nothing is loaded.
    """
    own = model.state_dict()
    report = LoadReport(source=source, resized=list(resized))
    report.missing = [k for k in own if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in own]
    fitting = {}
    for key, value in state_dict.items():
        if key not in own:
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            fitting[key] = value
    report.loaded = list(fitting)
    if strict and not report.complete:
        raise ValueError(f"strict loading of pretrained weights failed:\n{report}")
    model.load_state_dict(fitting, strict=False)
    return report
