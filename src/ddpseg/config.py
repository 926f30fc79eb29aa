"""mmseg-style Python configs: ``_base_`` inheritance, ``_delete_``, ``--cfg-options``.

A config file is a Python (or JSON) file whose top-level variables form a nested dict::

    _base_ = ['../_base_/datasets/cityscapes.py', '../_base_/default_runtime.py']
    model = dict(type='DDP', backbone=dict(type='mmcls.ConvNeXt', arch='tiny'))
    optimizer = dict(_delete_=True, type='AdamW', lr=6e-5)

Semantics follow mmcv 1.x ``Config`` so that configs written for the original DDP code load unchanged:

* ``_base_`` (a path or a list of paths, relative to the file) is loaded first; the bases must not
  define the same top-level key twice. The file's own values are then merged over the bases:
  dicts merge key-wise, a dict holding ``_delete_=True`` replaces the base value, anything else replaces.
* ``{{fileDirname}}``, ``{{fileBasename}}``, ``{{fileBasenameNoExtension}}`` and ``{{fileExtname}}`` are
  substituted in the file's text before it runs. ``{{_base_.xxx}}`` references are not supported.
* ``custom_imports`` is kept as a value but never imported (ddpseg needs no plug-in modules).

Config files are trusted user code: they are executed, exactly as mmcv does.
"""

from __future__ import annotations

import ast
import copy
import difflib
import json
import keyword
import math
import numbers
import re
import types
from argparse import Action
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "ConfigDict",
    "ConfigError",
    "DictAction",
    "check_bool",
    "check_int",
    "check_keys",
    "check_number",
    "parse_cfg_options",
]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
# These names are Config properties, so a config key of that name could never be read as an attribute.
RESERVED_KEYS = ("filename", "text", "pretty_text")
SUPPORTED_SUFFIXES = (".py", ".json")
_LINE_WIDTH = 79


class ConfigError(ValueError):
    """A config file or a config value is invalid."""


def _wrap(value: Any) -> Any:
    """Turn every dict inside ``value`` (also inside lists and tuples) into a ConfigDict."""
    if isinstance(value, ConfigDict):
        return value
    if isinstance(value, Mapping):
        return ConfigDict(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


def _plain(value: Any, drop_delete: bool = False) -> Any:
    """Plain dicts, lists and tuples all the way down; with ``drop_delete``, without ``_delete_`` flags
    (once merged a flag has done its job, and builders must not see it)."""
    if isinstance(value, Mapping):
        return {k: _plain(v, drop_delete) for k, v in value.items() if not (drop_delete and k == DELETE_KEY)}
    if isinstance(value, list):
        return [_plain(v, drop_delete) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, drop_delete) for v in value)
    return value


class ConfigDict(dict):
    """A dict whose keys can also be read and written as attributes (``cfg.model.backbone.type``).

    Nested dicts (also inside lists and tuples) are ConfigDicts too. A missing attribute raises
    ``AttributeError`` (so ``getattr(cfg, 'x', default)`` works); a missing item raises ``KeyError``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.update(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # keep copy/pickle protocol probes away from the keys
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}' (keys: {', '.join(map(str, self))})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self) -> ConfigDict:
        """Shallow copy that stays a ConfigDict (``dict.copy`` would return a plain dict)."""
        return ConfigDict(self)

    def __deepcopy__(self, memo: dict) -> ConfigDict:
        other = ConfigDict()
        memo[id(self)] = other
        for key, value in self.items():
            dict.__setitem__(other, copy.deepcopy(key, memo), copy.deepcopy(value, memo))
        return other

    def to_dict(self) -> dict:
        """Plain nested dicts/lists/tuples."""
        return _plain(self)


def _merge(child: Mapping, base: Any, *, allow_list_keys: bool, path: str = "") -> Any:
    """Return ``base`` with ``child`` merged over it; neither input is modified.

    With ``allow_list_keys``, digit keys of ``child`` ('0', '1', ...) address elements of a list in ``base``.
    """
    if isinstance(base, list):
        merged_list = list(base)
        for key, value in child.items():
            where = f"{path}.{key}"
            if not (allow_list_keys and isinstance(key, str) and key.isdigit()):
                raise ConfigError(f"'{path}' is a list, so '{where}' must use a list index, not '{key}'")
            index = int(key)
            if index >= len(merged_list):
                raise ConfigError(f"index {index} is out of range for '{path}', a list of length {len(merged_list)}")
            merged_list[index] = _merge_value(value, merged_list[index], allow_list_keys, where)
        return merged_list

    merged = dict(base)
    for key, value in child.items():
        if key == DELETE_KEY:
            continue
        if key in merged:
            where = f"{path}.{key}" if path else str(key)
            merged[key] = _merge_value(value, merged[key], allow_list_keys, where)
        else:
            merged[key] = _plain(value, drop_delete=True)
    return merged


def _merge_value(value: Any, old: Any, allow_list_keys: bool, where: str) -> Any:
    """The value that replaces ``old`` at ``where``: a key-wise merge for dicts, ``value`` otherwise."""
    if not isinstance(value, Mapping) or value.get(DELETE_KEY, False):
        return _plain(value, drop_delete=True)
    mergeable = (Mapping, list) if allow_list_keys else Mapping
    if not isinstance(old, mergeable):
        raise ConfigError(
            f"'{where}' is a dict in the child config but a {type(old).__name__} ({old!r}) in its base; "
            f"set {DELETE_KEY}=True in the child's dict to replace the base value"
        )
    return _merge(value, old, allow_list_keys=allow_list_keys, path=where)


_PREDEFINED_RE = re.compile(r"\{\{\s*(fileDirname|fileBasename|fileBasenameNoExtension|fileExtname)\s*\}\}")
_BASE_REF_RE = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")


def _substitute_predefined(text: str, path: Path) -> str:
    values = {
        "fileDirname": path.parent.as_posix(),
        "fileBasename": path.name,
        "fileBasenameNoExtension": path.stem,
        "fileExtname": path.suffix,
    }
    return _PREDEFINED_RE.sub(lambda m: values[m.group(1)], text)


def _is_config_variable(name: str, value: Any) -> bool:
    # Imported helpers (modules, functions, classes) are tools of the file, not settings.
    if name.startswith("__"):
        return False
    return not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))


def _read_file(path: Path) -> tuple[dict, str]:
    """Run one config file (bases not resolved); return its variables and its source text."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            variables = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        if not isinstance(variables, dict):
            raise ConfigError(f"config file {path} must hold a JSON object, got {type(variables).__name__}")
        return variables, text
    match = _BASE_REF_RE.search(text)
    if match:
        raise ConfigError(
            f"config file {path} uses '{match.group(0)}'; {{{{_base_.xxx}}}} references are not supported, "
            "write the value itself"
        )
    code = compile(_substitute_predefined(text, path), str(path), "exec")
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": "__ddpseg_config__"}
    exec(code, namespace)  # noqa: S102 - config files are trusted user code, as in mmcv
    variables = {k: v for k, v in namespace.items() if _is_config_variable(k, v)}
    return variables, text


def _load(path: Path, stack: tuple[Path, ...]) -> tuple[dict, list[str]]:
    """Load ``path`` with its bases merged in; return the dict and the source texts (bases first)."""
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"circular _base_ inheritance: {chain}")
    variables, text = _read_file(path)
    variables.pop("_deprecation_", None)  # mmcv's deprecation notice; nothing to act on here
    texts = [f"# {path}\n{text}"]
    if BASE_KEY not in variables:
        return _plain(variables, drop_delete=True), texts

    bases = variables.pop(BASE_KEY)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"_base_ in {path} must be a path or a list of paths, got {bases!r}")

    merged_bases: dict[str, Any] = {}
    defined_in: dict[str, Path] = {}
    base_texts: list[str] = []
    for base in bases:
        base_path = (path.parent / base).expanduser().resolve()
        if not base_path.is_file():
            raise FileNotFoundError(f"base config '{base}' referenced by {path} not found (looked for {base_path})")
        base_dict, texts_of_base = _load(base_path, (*stack, path))
        for key in base_dict:
            if key in merged_bases:
                raise ConfigError(
                    f"key '{key}' is defined by two bases of {path}: {defined_in[key]} and {base_path}; "
                    "a key may come from only one base"
                )
            defined_in[key] = base_path
        merged_bases.update(base_dict)
        base_texts.extend(texts_of_base)
    return _merge(variables, merged_bases, allow_list_keys=False), base_texts + texts


def _format_scalar(value: Any, where: str) -> str:
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float('{value}')"
    raise ConfigError(f"cannot write '{where}': values of type {type(value).__name__} ({value!r}) have no literal form")


def _format_value(value: Any, indent: int, where: str, lead: int) -> str:
    """Python source for ``value``: one line when it fits, otherwise one element per line.

    ``indent`` is the indentation of the line the value starts on, ``lead`` the column it starts at.
    """
    inner = indent + 4
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in value):
            keys = [f"{k}=" for k in value]
            opening, closing = "dict(", ")"
        else:
            keys = [f"{_format_scalar(k, where)}: " for k in value]
            opening, closing = "{", "}"
        items = [
            key + _format_value(v, inner, f"{where}.{k}", inner + len(key))
            for key, (k, v) in zip(keys, value.items())
        ]
    elif isinstance(value, (list, tuple)):
        items = [_format_value(v, inner, f"{where}.{i}", inner) for i, v in enumerate(value)]
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
    else:
        return _format_scalar(value, where)

    one_line = opening + ", ".join(items) + ("," if isinstance(value, tuple) and len(items) == 1 else "") + closing
    if "\n" not in one_line and lead + len(one_line) < _LINE_WIDTH:
        return one_line
    pad = " " * inner
    return opening + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + closing


class Config(ConfigDict):
    """A loaded config: a :class:`ConfigDict` that remembers its file and can be written back.

    Example::

        cfg = Config.fromfile('configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py')
        cfg.merge_from_dict(parse_cfg_options(['data.samples_per_gpu=2']))
        cfg.model.backbone.arch      # 'tiny'
        cfg.dump('work_dirs/x/config.py')

    Equality is that of the contents (``filename`` and ``text`` are not compared).
    """

    def __init__(
        self,
        cfg_dict: Mapping[str, Any] | None = None,
        filename: str | Path | None = None,
        text: str = "",
    ) -> None:
        if cfg_dict is None:
            cfg_dict = {}
        if not isinstance(cfg_dict, Mapping):
            raise TypeError(f"cfg_dict must be a mapping, got {type(cfg_dict).__name__}")
        # Stored in __dict__, not as keys (ConfigDict.__setattr__ would make them keys).
        object.__setattr__(self, "_filename", None if filename is None else str(filename))
        object.__setattr__(self, "_text", text)
        super().__init__(cfg_dict)

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in RESERVED_KEYS:
            raise ConfigError(f"'{key}' is reserved and cannot be a config key (source: {self.filename or '<dict>'})")
        super().__setitem__(key, value)

    @classmethod
    def fromfile(cls, path: str | Path) -> Config:
        """Load a ``.py`` or ``.json`` config file, resolving ``_base_`` recursively.

        Raises:
            FileNotFoundError: ``path`` or one of its bases does not exist.
            ConfigError: unsupported suffix, bad ``_base_``, a key defined by two bases, a dict/non-dict
                conflict between a child and its base, a reserved key, or circular inheritance.
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        if path.suffix not in SUPPORTED_SUFFIXES:
            raise ConfigError(f"config file {path} must end in one of {', '.join(SUPPORTED_SUFFIXES)}")
        cfg_dict, texts = _load(path, ())
        return cls(cfg_dict, filename=path, text="\n".join(texts))

    @property
    def filename(self) -> str | None:
        """Absolute path of the file this config was loaded from (None when built from a dict)."""
        return self.__dict__.get("_filename")

    @property
    def text(self) -> str:
        """Source text of the file and all its bases (bases first), each headed by its path."""
        return self.__dict__.get("_text", "")

    @property
    def pretty_text(self) -> str:
        """The merged config as a Python config file (no ``_base_``) that loads back to an equal config."""
        lines = []
        for key, value in self.items():
            if not (isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)):
                raise ConfigError(f"top-level key {key!r} is not a Python identifier and cannot be written")
            lines.append(f"{key} = {_format_value(value, 0, key, len(key) + 3)}\n")
        return "".join(lines)

    def __repr__(self) -> str:
        return f"Config(filename={self.filename!r}): {self.to_dict()!r}"

    def copy(self) -> Config:
        """An independent (deep) copy: changing it never changes this config."""
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict) -> Config:
        return Config(copy.deepcopy(self.to_dict(), memo), filename=self.filename, text=self.text)

    def dump(self, path: str | Path | None = None) -> str:
        """Write the merged config to ``path`` (``.py`` or ``.json``) and return the written text.

        Without ``path`` only the Python text is returned. JSON has no tuples, so tuples come back as lists.
        """
        if path is None or Path(path).suffix == ".py":
            text = self.pretty_text
        elif Path(path).suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            raise ConfigError(f"cannot dump config to {path}: the suffix must be .py or .json")
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    def merge_from_dict(self, options: Mapping[str, Any], allow_list_keys: bool = True) -> None:
        """Merge ``{'dotted.key': value}`` overrides into this config, in place.

        ``model.backbone.depth=50`` sets one key; dict values merge key-wise; with ``allow_list_keys``
        a numeric part addresses a list element (``data.train.pipeline.1.img_scale``).
        """
        nested: dict[str, Any] = {}
        for full_key, value in options.items():
            parts = full_key.split(".")
            if "" in parts:
                raise ConfigError(f"invalid option key '{full_key}': empty part between dots")
            node = nested
            for i, part in enumerate(parts[:-1]):
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"option '{full_key}' conflicts with option '{'.'.join(parts[: i + 1])}'")
            node[parts[-1]] = _plain(value)
        merged = Config(_merge(nested, self.to_dict(), allow_list_keys=allow_list_keys), filename=self.filename)
        self.clear()  # only now: a failed merge leaves the config as it was
        dict.update(self, merged)


def _parse_scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text == "None":
        return None
    return text


def _split_top_level(text: str, original: str) -> list[str]:
    """Split at commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced brackets in option value '{original}'")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(f"unbalanced brackets in option value '{original}'")
    parts.append(text[start:])
    return parts


def _is_enclosed(text: str, opening: str, closing: str) -> bool:
    """True if ``text`` is one bracketed group: '(1,2)' yes, '(1,2),(3,4)' no."""
    if not (text.startswith(opening) and text.endswith(closing)):
        return False
    depth = 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0:
            return i == len(text) - 1
    return False


def _parse_value(text: str, original: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]  # quoted: a string as written, even if it looks like a number
    if _is_enclosed(text, "{", "}"):  # a dict literal, e.g. data.test.label_map={1:0,2:1}
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"option '{original}': {text} is not a dict of plain values (numbers, quoted "
                              "strings, lists, tuples, dicts)") from None
        if not isinstance(value, dict):
            raise ConfigError(f"option '{original}': {text} is not a dict (a set?); write {{key: value, ...}}")
        return value
    is_tuple = _is_enclosed(text, "(", ")")
    if is_tuple or _is_enclosed(text, "[", "]"):
        inner = text[1:-1]
        if inner.strip() == "":
            return () if is_tuple else []
        parts = _split_top_level(inner, original)
        if len(parts) > 1 and parts[-1].strip() == "":  # trailing comma, as in '(1,)'
            parts = parts[:-1]
    else:
        parts = _split_top_level(text, original)
        if len(parts) == 1:
            return _parse_scalar(text)
        # bare 'a,b,c' is a list, as in mmcv
    values = [_parse_value(part, original) for part in parts]
    return tuple(values) if is_tuple else values


def parse_cfg_options(options: Iterable[str]) -> dict[str, Any]:
    """Parse ``['key=value', ...]`` (as given to ``--cfg-options``) into ``{key: value}``.

    Values as in mmcv's ``DictAction``: int, float, ``true``/``false`` (any case), ``None``, ``[a,b]`` lists,
    ``(a,b)`` tuples, nesting (``[(1,2),(3,4)]``), bare ``a,b`` lists; anything else is a string. Beyond mmcv,
    ``{k: v, ...}`` is a dict of Python literals (e.g. ``data.test.label_map={1:0,2:1}``).
    Unlike mmcv, a quoted value (``"'1'"``) stays a string and spaces inside strings are kept.
    """
    parsed: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"option '{item}' must have the form key=value")
        parsed[key.strip()] = _parse_value(value, item)
    return parsed


class DictAction(Action):
    """argparse action for ``--cfg-options k=v [k=v ...]`` (use with ``nargs='+'``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        try:
            options = parse_cfg_options(values if isinstance(values, list) else [values])
        except ConfigError as e:
            parser.error(str(e))
        merged = dict(getattr(namespace, self.dest, None) or {})
        merged.update(options)
        setattr(namespace, self.dest, merged)


def check_keys(
    section: Mapping[str, Any], allowed: Iterable[str], where: str, *, error: type[ConfigError] = ConfigError
) -> None:
    """Raise :class:`ConfigError` (or its subclass ``error``) if ``section`` has a key outside ``allowed``.

    ``where`` is the section's path for the message (e.g. ``'model.decode_head'``). The message names
    every unknown key, suggests the closest allowed key, and lists the allowed keys.
    """
    if not isinstance(section, Mapping):
        raise error(f"{where} must be a dict, got {type(section).__name__} ({section!r})")
    allowed = sorted(set(allowed))
    unknown = [key for key in section if key not in allowed]
    if not unknown:
        return
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"'{key}'{hint}")
    raise error(
        f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(problems)} in {where}; "
        f"allowed keys: {', '.join(allowed)}"
    )


def _bound(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""


def check_int(
    value: Any, where: str, *, minimum: int | None = None, maximum: int | None = None,
    error: type[ConfigError] = ConfigError,
) -> int:
    """``value`` as an int, or :class:`ConfigError` (or ``error``) naming ``where``, the value and what was
    expected. Floats (``2.5``, also ``2.0``), strings and bools are refused, not converted."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        if (minimum is None or number >= minimum) and (maximum is None or number <= maximum):
            return number
    raise error(f"{where} must be an integer{_bound(minimum, maximum)}, got {value!r}")


def check_number(
    value: Any, where: str, *, minimum: float | None = None, maximum: float | None = None,
    error: type[ConfigError] = ConfigError,
) -> float:
    """``value`` (an int or a float) as a float, or :class:`ConfigError` (or ``error``) naming ``where``, the
    value and what was expected. Strings (``'0.01'``) and bools are refused, not converted."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value):
        number = float(value)
        if (minimum is None or number >= minimum) and (maximum is None or number <= maximum):
            return number
    raise error(f"{where} must be a number{_bound(minimum, maximum)}, got {value!r}")


def check_bool(value: Any, where: str, *, error: type[ConfigError] = ConfigError) -> bool:
    """``value`` if it is True or False, else :class:`ConfigError` (or ``error``) naming ``where``."""
    if isinstance(value, bool):
        return value
    raise error(f"{where} must be True or False, got {value!r}")
