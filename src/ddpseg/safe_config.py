"""Read a dumped config (``Config.pretty_text``) back without executing it.

Checkpoints carry their config as text; running that text would let a checkpoint execute code, so it
is parsed instead: only literals, ``dict(key=literal, ...)`` calls, lists, tuples and signs are accepted.
"""

from __future__ import annotations

import ast
from typing import Any, Dict

__all__ = ["parse_config_text", "UnsafeConfigError"]


class UnsafeConfigError(ValueError):
    """The text holds something other than plain values (a call, a name, an import ...)."""


def _value(node: ast.AST, where: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e, where) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise UnsafeConfigError(f"{where}: '**' unpacking is not allowed")
        return {_value(k, where): _value(v, where) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, where)
        if not isinstance(operand, (int, float)):
            raise UnsafeConfigError(f"{where}: a sign applies to numbers only")
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise UnsafeConfigError(f"{where}: '**' unpacking is not allowed")
        return {kw.arg: _value(kw.value, f"{where}.{kw.arg}") for kw in node.keywords}
    raise UnsafeConfigError(f"{where}: only plain values are allowed, found {ast.dump(node)[:80]}")


def parse_config_text(text: str, source: str = "<config>") -> Dict[str, Any]:
    """``name = value`` lines → dict; anything that would need executing raises :class:`UnsafeConfigError`."""
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as err:
        raise UnsafeConfigError(f"{source}: not a config text ({err})") from None
    out: Dict[str, Any] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise UnsafeConfigError(f"{source}: line {stmt.lineno} is not a plain 'name = value' assignment")
        name = stmt.targets[0].id
        out[name] = _value(stmt.value, f"{source}:{stmt.lineno} {name}")
    return out
