"""Checkpoint files: atomic writes, the ``latest`` pointer, keep-last-K, and loading of every accepted format.

One checkpoint named ``<name>`` (``iter_<N>`` or ``best_<metric>_iter_<N>``) in the work dir is three files, each
written to a temporary file in the same directory, fsynced, then renamed into place, in this order:

1. ``<name>.safetensors`` — model weights (``state_dict`` of the bare model, CPU tensors).
2. ``<name>.state.pt``    — training state (optimizer, schedule, grad scaler, RNG states of every rank, data
   iterator state), plain tensors and containers only: it loads with ``torch.load(weights_only=True)``.
3. ``<name>.json``        — readable metadata: format, iteration, versions, config text, model config section,
   mmseg-style ``meta``. Its presence marks the checkpoint complete.

``latest.json`` (``{"iter": N, "checkpoint": "iter_N.json"}``) is replaced last, so a process killed at any moment
leaves the previous checkpoint named by ``latest.json`` intact and loadable.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import ddpseg

from ..atomic import AtomicWriteError
from ..atomic import atomic_write as _atomic_write

FORMAT = "ddpseg-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"
META_SUFFIX = ".json"
LATEST_NAME = "latest.json"
_ITER_NAME = re.compile(r"^iter_(\d+)$")

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, found, read, or does not fit the model."""


# ---------------------------------------------------------------------------------------------- atomic writing
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """:func:`ddpseg.atomic.atomic_write`, failures reported as :class:`CheckpointError` naming ``path``."""
    try:
        _atomic_write(path, write)
    except AtomicWriteError as err:
        raise CheckpointError(str(err)) from err.__cause__


def _write_json(path: Path, obj: Any) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    atomic_write(path, write)


# ---------------------------------------------------------------------------------------------- validation
def to_jsonable(obj: Any, where: str = "value") -> Any:
    """``obj`` with tuples as lists and numpy/torch scalars as Python numbers; other types raise."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where} is a {type(obj).__name__}, which cannot be stored in checkpoint JSON metadata")


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise unless ``obj`` holds only tensors, numbers, strings, None and lists/tuples/dicts of them, i.e. what
    ``torch.load(weights_only=True)`` reads back without unpickling arbitrary objects."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; only str/int keys are stored")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; training state may hold only tensors and plain containers")


# ---------------------------------------------------------------------------------------------- saving
def _weights_for_safetensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}; only tensors can be saved as weights")
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (tied weights, views): store such entries as copies.
        if storage in seen_storage and tensor.numel() > 0:
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors


def _safetensors_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """String header of the weights file, in the layout ``ddpseg convert`` writes (``format``, ``config``, JSON
    ``meta``, ``CLASSES``, ``PALETTE``), so the ``.safetensors`` file alone is a usable inference checkpoint."""
    header = {"format": "ddpseg", "iter": str(metadata["iter"]), "meta": json.dumps(metadata["meta"])}
    if metadata["config"] is not None:
        header["config"] = metadata["config"]
    for key in ("CLASSES", "PALETTE"):
        if metadata["meta"].get(key) is not None:
            header[key] = json.dumps(metadata["meta"][key])
    return header


def checkpoint_paths(work_dir: PathLike, name: str) -> dict[str, Path]:
    base = Path(work_dir)
    return {
        "weights": base / f"{name}{WEIGHTS_SUFFIX}",
        "state": base / f"{name}{STATE_SUFFIX}",
        "meta": base / f"{name}{META_SUFFIX}",
    }


def save_checkpoint(
    work_dir: PathLike,
    name: str,
    *,
    state_dict: Mapping[str, torch.Tensor],
    iteration: int,
    training_state: Optional[Mapping[str, Any]] = None,
    config_text: Optional[str] = None,
    model_config: Any = None,
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write checkpoint ``name`` into ``work_dir`` (weights, then training state, then metadata); returns the
    metadata path. Does not touch ``latest.json`` (see :func:`update_latest`)."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {work_dir} does not exist or is not a directory")
    paths = checkpoint_paths(work_dir, name)
    if training_state is not None:
        check_plain(training_state, "training_state")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "iter": int(iteration),
        "ddpseg_version": ddpseg.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "weights": paths["weights"].name,
        "state": paths["state"].name if training_state is not None else None,
        "config": config_text,
        "model_config": to_jsonable(model_config, "model_config"),
        "meta": to_jsonable(dict(meta or {}), "meta"),
    }
    tensors = _weights_for_safetensors(state_dict)
    header = _safetensors_metadata(metadata)
    atomic_write(paths["weights"], lambda tmp: save_file(tensors, str(tmp), metadata=header))
    if training_state is not None:
        atomic_write(paths["state"], lambda tmp: torch.save(dict(training_state), tmp))
    _write_json(paths["meta"], metadata)
    return paths["meta"]


def update_latest(work_dir: PathLike, name: str, iteration: int) -> None:
    """Point ``latest.json`` at checkpoint ``name`` (written last, after the checkpoint is complete)."""
    _write_json(Path(work_dir) / LATEST_NAME, {"iter": int(iteration), "checkpoint": f"{name}{META_SUFFIX}"})


def find_latest(work_dir: PathLike) -> Optional[Path]:
    """Metadata path of the checkpoint ``latest.json`` names, or None when the work dir has no ``latest.json``."""
    pointer = Path(work_dir) / LATEST_NAME
    if not pointer.is_file():
        return None
    try:
        target = Path(work_dir) / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{pointer} is not a valid latest-checkpoint pointer: {err}") from err
    if not target.is_file():
        raise CheckpointError(f"{pointer} names {target.name}, which does not exist")
    return target


def remove_checkpoint(work_dir: PathLike, name: str) -> None:
    """Delete checkpoint ``name``, metadata first, so a partial deletion never looks like a complete checkpoint."""
    paths = checkpoint_paths(work_dir, name)
    for key in ("meta", "state", "weights"):
        paths[key].unlink(missing_ok=True)


def prune_checkpoints(work_dir: PathLike, keep: int) -> list[str]:
    """Keep the ``keep`` newest ``iter_<N>`` checkpoints (all when ``keep <= 0``); never the one ``latest.json``
    names, never ``best_*``. Returns the removed names."""
    if keep <= 0:
        return []
    work_dir = Path(work_dir)
    latest = find_latest(work_dir)
    protected = latest.name[: -len(META_SUFFIX)] if latest is not None else None
    names = {p.name.split(".")[0] for p in work_dir.glob("iter_*") if p.is_file()}
    iters = sorted((int(m.group(1)), n) for n in names if (m := _ITER_NAME.match(n)))
    removed = []
    for _, name in iters[:-keep]:
        if name != protected:
            remove_checkpoint(work_dir, name)
            removed.append(name)
    return removed


def remove_stale_temporaries(work_dir: PathLike) -> None:
    """Delete temporary files a killed checkpoint writer left behind (``.<file name>.<pid>.tmp``)."""
    for suffix in (WEIGHTS_SUFFIX, STATE_SUFFIX, META_SUFFIX):
        for tmp in Path(work_dir).glob(f".*{suffix}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- loading
# mmseg stores e.g. the best mIoU as a numpy scalar in ``meta``; these rebuild numpy scalars/arrays only.
def _numpy_safe_globals() -> list[Any]:
    multiarray = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_)]
    return [multiarray.multiarray.scalar, multiarray.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


_ZIP_MAGIC = b"PK\x03\x04"  # what torch.load checks: torch.save's default (zip) format
_PICKLE_PROTOCOLS = range(2, 6)  # torch.save's legacy format: a pickle stream, PROTO opcode 0x80 + protocol
_KIND_NAMES = {"zip": "zip archive", "pickle": "pickle"}
_TEXT_PICKLE_MAGIC = b"L119547037146038801333356L"  # torch's legacy magic number pickled with protocol 0 or 1


def _looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte little-endian header length, then the JSON header."""
    return len(head) > 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def sniff_checkpoint(path: PathLike) -> str:
    """What kind of file ``path`` is, from its first bytes: ``'zip'`` or ``'pickle'`` (``torch.save``'s two
    formats), ``'old_pickle'`` (the legacy one with pickle protocol 0 or 1), ``'safetensors'``, ``'tar'`` (torch's
    oldest format) or ``'unknown'``.

    A missing, unreadable or empty file raises :class:`CheckpointError` naming it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder, expected a checkpoint file") from None
    except OSError as err:
        raise CheckpointError(f"could not read checkpoint {path}: {err.strerror or err}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted download or copy?")
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    if head.startswith(_TEXT_PICKLE_MAGIC[:16]):
        return "old_pickle"
    if _looks_like_safetensors(head):
        return "safetensors"
    import tarfile

    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    return "unknown"


def _torch_reason(err: BaseException) -> str:
    """torch's error message without its advice to load with ``weights_only=False`` or to file an issue."""
    text = str(err)
    unsafe = getattr(torch.serialization, "UNSAFE_MESSAGE", None)
    if unsafe:
        text = text.replace(unsafe, "")
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
    text = text.split("Check the documentation of torch.load", 1)[0]
    text = text.replace("Weights only load failed.", "")
    text = " ".join(text.split())
    # "PytorchStreamReader failed ...: <reason>. This is an internal miniz error. If you are seeing this ..."
    text = text.split(". This is an internal", 1)[0]
    advice = ("weights_only", "file an issue", "allowlist")
    text = " ".join(s for s in re.split(r"(?<=\.)\s+", text) if not any(a in s for a in advice))
    return text or type(err).__name__


def _what_text_it_is(path: Path) -> str:
    """For a file that is no checkpoint: ``'; it is a text file starting with ...'`` (or a Git LFS pointer), else ''."""
    first_line = _text_start(path)
    if first_line is None:
        return ""
    if first_line.startswith("version https://git-lfs"):
        return "; it is a Git LFS pointer file: fetch the real file with git lfs pull"
    return f"; it is a text file starting with {first_line!r}"


def _text_start(path: Path) -> Optional[str]:
    """The first line of ``path`` when the file starts with text, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of what was read
            return None
        text = head[: err.start].decode("utf-8")
    if not text or any(not (c.isprintable() or c in "\t\r\n") for c in text):
        return None
    return text.strip().splitlines()[0][:60] if text.strip() else None


_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)")

_NOT_A_CHECKPOINT = {
    "unknown": "is not a PyTorch checkpoint (neither a zip archive nor a pickle, the two formats torch.save writes)",
    "safetensors": "is a safetensors file, not a torch.save checkpoint: name it *.safetensors to load it as one",
    "old_pickle": (
        "was written by torch.save with pickle protocol 0 or 1, which torch's weights-only loader (the only way "
        "ddpseg reads .pth files) cannot read; re-save it with torch.save's default protocol where you trust the file"
    ),
    "tar": (
        "is a tar archive: PyTorch's oldest (.tar) checkpoint format, which cannot be read without executing pickled "
        "code; re-save its state dict with a current torch (torch.save(state_dict, 'weights.pth')) where you trust "
        "the file"
    ),
}


def torch_load(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, also allowing numpy scalars found in mmseg checkpoints.

    Pickled code is never executed. Any failure is a :class:`CheckpointError` that names the file and says what is
    wrong: missing, empty, not a ``torch.save`` file at all, holding pickled objects other than tensors and plain
    containers, or corrupt/truncated.
    """
    path = Path(path)
    kind = sniff_checkpoint(path)
    if kind in _NOT_A_CHECKPOINT:
        hint = _what_text_it_is(path) if kind == "unknown" else ""
        raise CheckpointError(f"{path} {_NOT_A_CHECKPOINT[kind]}{hint}")
    what = _KIND_NAMES[kind]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_safe_globals()):
            # torch asks to "file an issue" about pickle protocols other than 2: nothing the user can act on
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*TorchScript archive", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise CheckpointError(
                f"{path} holds pickled Python objects other than tensors and plain containers (first: "
                f"{refused.group(1)}); ddpseg only loads checkpoints without executing pickled code. Re-save its "
                "weights as a plain state dict (torch.save(checkpoint['state_dict'], 'weights.pth')) where you "
                "trust the file, or as .safetensors"
            ) from err
        raise CheckpointError(
            f"{path} is a {what} but not a readable PyTorch checkpoint (corrupt, or not written by torch.save): "
            f"{_torch_reason(err)}"
        ) from err
    except EOFError as err:
        raise CheckpointError(
            f"{path} is truncated: its {what} data ends early (an interrupted save or copy?)"
        ) from err
    except OSError as err:
        raise CheckpointError(f"could not read checkpoint {path}: {err.strerror or err}") from err
    except Exception as err:  # a corrupt pickle makes the weights-only unpickler fail with any error type
        if "TorchScript" in str(err):
            raise CheckpointError(
                f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint of weights; ddpseg does not "
                "load TorchScript programs"
            ) from err
        reason = _torch_reason(err) if isinstance(err, RuntimeError) else f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"{path} is a {what} but not a readable PyTorch checkpoint (corrupt or truncated?): {reason}"
        ) from err


def _download(url: str) -> Path:
    """Fetch ``url`` once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    filename = Path(urllib.parse.urlparse(url).path).name
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    return target


def resolve_checkpoint_meta(path: Path) -> Optional[Path]:
    """The ``.json`` metadata of our format that ``path`` refers to, or None for a foreign file."""
    if path.is_dir():
        latest = find_latest(path)
        if latest is None:
            raise CheckpointError(f"{path} is a directory without {LATEST_NAME}; name a checkpoint file")
        return latest
    if path.name == LATEST_NAME:
        return find_latest(path.parent)
    for suffix in (META_SUFFIX, WEIGHTS_SUFFIX, STATE_SUFFIX):
        if path.name.endswith(suffix):
            candidate = path.with_name(path.name[: -len(suffix)] + META_SUFFIX)
            return candidate if candidate.is_file() else None
    candidate = path.with_name(path.name + META_SUFFIX)
    return candidate if candidate.is_file() else None


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def _metadata_file_name(metadata: Mapping[str, Any], key: str, meta_path: Path) -> str:
    """The file name stored under ``key`` of a checkpoint's metadata, checked to be a plain name in its folder."""
    if key not in metadata:
        raise CheckpointError(
            f"{meta_path} has no {key!r} key; a {FORMAT} metadata file names its {key} file there "
            f"(e.g. \"{key}\": \"{meta_path.stem}{WEIGHTS_SUFFIX if key == 'weights' else STATE_SUFFIX}\")"
        )
    name = metadata[key]
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(f"{meta_path}: {key!r} must be a file name in the same folder, got {name!r}")
    return name


def load_checkpoint(path: PathLike, *, with_training_state: bool = False) -> dict[str, Any]:
    """Read a checkpoint onto the CPU.

    Accepts our format (a work dir or its ``latest.json`` — the latest checkpoint —, or any of ``iter_N.json``,
    ``iter_N.safetensors``, ``iter_N.state.pt``, ``iter_N``), a bare ``.safetensors`` file, a ``.pth``/``.pt``
    file holding mmseg's ``{'meta', 'state_dict', 'optimizer'}`` or a plain state dict (read with
    ``torch.load(weights_only=True)``; a ``module.`` prefix is removed), or an http(s) URL of one of those.

    Returns ``{'state_dict', 'meta', 'iter', 'config', 'model_config', 'training_state', 'optimizer', 'path',
    'format'}``; absent items are None (``meta`` is ``{}``). ``training_state`` is read only when asked for.
    """
    text = str(path)
    if text.startswith(("http://", "https://")):
        path = _download(text)
    path = Path(path)
    meta_path = resolve_checkpoint_meta(path)
    result: dict[str, Any] = dict.fromkeys(
        ("state_dict", "iter", "config", "model_config", "training_state", "optimizer"), None
    )
    result["meta"] = {}
    if meta_path is not None:
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"could not read checkpoint metadata {meta_path}: {err}") from err
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            found = metadata.get("format") if isinstance(metadata, dict) else f"a JSON {type(metadata).__name__}"
            raise CheckpointError(f"{meta_path} is not a {FORMAT} metadata file (format={found!r})")
        weights = meta_path.parent / _metadata_file_name(metadata, "weights", meta_path)
        if not weights.is_file():
            raise CheckpointError(f"{meta_path} names the weights file {weights.name}, which does not exist")
        result.update(
            state_dict=load_safetensors(weights),
            meta=metadata.get("meta") or {},
            iter=metadata.get("iter"),
            config=metadata.get("config"),
            model_config=metadata.get("model_config"),
            path=str(meta_path),
            format="ddpseg",
        )
        if with_training_state:
            if not metadata.get("state"):
                raise CheckpointError(f"{meta_path} was saved without training state; it cannot be resumed from")
            state = meta_path.parent / _metadata_file_name(metadata, "state", meta_path)
            if not state.is_file():
                raise CheckpointError(f"{meta_path} names the training state file {state.name}, which does not exist")
            result["training_state"] = torch_load(state)
        return result
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if with_training_state:
        raise CheckpointError(
            f"{path} is not a ddpseg training checkpoint (iter_N.json/.safetensors/.state.pt); it has no training "
            "state to resume from — load its weights with load_from instead"
        )
    result["path"] = str(path)
    if path.suffix == WEIGHTS_SUFFIX:
        result.update(state_dict=load_safetensors(path), format="safetensors")
        return result
    obj = torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict")
    if "state_dict" in obj:
        state_dict, result["meta"], result["optimizer"] = obj["state_dict"], obj.get("meta") or {}, obj.get("optimizer")
        result["iter"] = result["meta"].get("iter")
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict = obj
    else:
        raise CheckpointError(
            f"{path} is neither a state dict nor a dict with 'state_dict'; its top-level keys are {sorted(obj)[:10]}"
        )
    result.update(state_dict=_strip_module_prefix(state_dict), format="pth")
    return result


def load_safetensors(path: PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file on the CPU; a failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    kind = sniff_checkpoint(path)
    if kind in ("zip", "pickle"):
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint ({_KIND_NAMES[kind]} written by torch.save), not a safetensors file: "
            "name it *.pth to load it as one"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for truncated or foreign files
        reason = str(err).removeprefix("Error while deserializing header: ")
        hint = _what_text_it_is(path) if kind == "unknown" else ""
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated, corrupt, or another format): {reason}{hint}"
        ) from err


# ---------------------------------------------------------------------------------------------- model fit
def state_dict_mismatch(
    model_state: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mis-shaped)`` keys of ``loaded`` relative to ``model_state``."""
    missing = [k for k in model_state if k not in loaded]
    unexpected = [k for k in loaded if k not in model_state]
    mis_shaped = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in model_state
        if k in loaded and tuple(loaded[k].shape) != tuple(model_state[k].shape)
    ]
    return missing, unexpected, mis_shaped


def describe_mismatch(missing: list[str], unexpected: list[str], mis_shaped: list[str], limit: int = 20) -> str:
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", mis_shaped)):
        if items:
            shown = "\n    ".join(items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"  {title} ({len(items)}):\n    {shown}{more}")
    return "\n".join(parts)


def load_weights(
    model: nn.Module,
    source: Union[PathLike, Mapping[str, torch.Tensor]],
    *,
    strict: bool = True,
    filter_fn: Optional[Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]] = None,
    source_name: Optional[PathLike] = None,
) -> dict[str, Any]:
    """Load weights (not training state) from a checkpoint path or a state dict into ``model``.

    ``filter_fn(state_dict, model)`` may rename/convert keys first. With ``strict`` any missing, unexpected or
    mis-shaped key raises a :class:`CheckpointError` listing them; otherwise matching entries are loaded and the
    rest reported in a warning. ``source_name`` names a state dict given as a mapping in those messages (e.g. the
    file it was read from; default ``<state dict>``). Returns the loaded checkpoint dict (see
    :func:`load_checkpoint`).
    """
    if isinstance(source, Mapping):
        name = str(source_name) if source_name is not None else "<state dict>"
        checkpoint: dict[str, Any] = {"state_dict": dict(source), "meta": {}, "path": name}
    else:
        checkpoint = load_checkpoint(source)
    state_dict = checkpoint["state_dict"]
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    missing, unexpected, mis_shaped = state_dict_mismatch(model.state_dict(), state_dict)
    if missing or unexpected or mis_shaped:
        report = describe_mismatch(missing, unexpected, mis_shaped)
        message = f"weights in {checkpoint['path']} do not fit {type(model).__name__}:\n{report}"
        if strict:
            raise CheckpointError(message)
        warnings.warn(message, stacklevel=2)
    bad = set(unexpected) | {entry.split(":")[0] for entry in mis_shaped}
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in bad}, strict=False)
    return checkpoint


def config_diff(stored: Any, current: Any, where: str = "model") -> list[str]:
    """Human-readable differences between two JSON-like config sections (``where`` prefixes each path)."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        diffs = []
        for key in list(stored) + [k for k in current if k not in stored]:
            if key not in current:
                diffs.append(f"{where}.{key}: only in the checkpoint ({stored[key]!r})")
            elif key not in stored:
                diffs.append(f"{where}.{key}: not in the checkpoint (now {current[key]!r})")
            else:
                diffs.extend(config_diff(stored[key], current[key], f"{where}.{key}"))
        return diffs
    if stored != current:
        return [f"{where}: {stored!r} in the checkpoint, {current!r} now"]
    return []


def check_resumable(checkpoint: Mapping[str, Any], model: nn.Module, model_config: Any) -> None:
    """Refuse a checkpoint saved for another model: different ``model`` config section or state-dict layout."""
    problems = []
    stored_config = checkpoint.get("model_config")
    if stored_config is not None and model_config is not None:
        problems.extend(config_diff(stored_config, to_jsonable(model_config, "model_config")))
    layout = describe_mismatch(*state_dict_mismatch(model.state_dict(), checkpoint["state_dict"]))
    if layout:
        problems.append("state dict layout differs:\n" + layout)
    if problems:
        raise CheckpointError(
            f"refusing to resume from {checkpoint.get('path')}: it was saved for a different model config:\n  "
            + "\n  ".join(problems)
        )
