"""What `retrain_run.connect(config)` would record, read from the code without running it,
so a template made by `task capture` lists the parameters its script connects.

Only what is certain is read: calls of `connect` from `retrain_run` (however imported) on a
module of the checkout (`import config`, `from pkg import settings`) or on a dict literal
assigned at the script's top level; the module's top-level assignments of literal values
(`lr = 0.1`, `layers = [64, 32]`) are its defaults. Anything computed is left out: running
the user's code at registration could have any effect.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

SECTION = "General"
"""As `retrain_run.SECTION`: a connected `lr` is parameter `General/lr`."""


def connected_defaults(root: Path, entry: Path) -> dict[str, Any]:
    """Parameter name -> default for each `connect` call in `entry` (a script in the checkout
    `root`) that can be read statically; empty when there is none or the file does not parse."""
    tree = _parse(entry)
    if tree is None:
        return {}
    api_names, connect_names = _api_aliases(tree)
    modules = _imported_modules(tree)
    literals = _top_level_literals(tree)
    found: dict[str, Any] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        is_connect = (
            isinstance(func, ast.Attribute)
            and func.attr == "connect"
            and isinstance(func.value, ast.Name)
            and func.value.id in api_names
        ) or (isinstance(func, ast.Name) and func.id in connect_names)
        if not is_connect or not isinstance(node.args[0], ast.Name):
            continue
        section = _section(node)
        if section is None:
            continue
        target = node.args[0].id
        values: dict[str, Any] | None = None
        if target in modules:
            values = _module_literals(root, entry.parent, modules[target])
        elif isinstance(literals.get(target), dict):
            values = {k: v for k, v in literals[target].items() if isinstance(k, str)}
        for key, value in (values or {}).items():
            if not key.startswith("_"):
                found[f"{section}/{key}"] = value
    return found


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _api_aliases(tree: ast.Module) -> tuple[set[str], set[str]]:
    api, connect = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "retrain_run":
                    api.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "retrain_run":
            for alias in node.names:
                if alias.name == "connect":
                    connect.add(alias.asname or alias.name)
    return api, connect


def _imported_modules(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted module path, for plain absolute imports."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found[alias.asname] = alias.name
                elif "." not in alias.name:
                    found[alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


_NOT_LITERAL = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


def _top_level_literals(tree: ast.Module) -> dict[str, Any]:
    """Names assigned a literal at the top level (the last assignment counts); a dict display
    keeps its literal entries even when others are computed."""
    found: dict[str, Any] = {}
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if not isinstance(target, ast.Name) or value is None:
            continue
        found.pop(target.id, None)
        if isinstance(value, ast.Dict):
            entries = {}
            for key, item in zip(value.keys, value.values, strict=True):
                try:
                    if key is not None:
                        entries[ast.literal_eval(key)] = ast.literal_eval(item)
                except _NOT_LITERAL:
                    continue
            found[target.id] = entries
            continue
        try:
            found[target.id] = ast.literal_eval(value)
        except _NOT_LITERAL:
            continue
    return found


def _module_literals(root: Path, here: Path, dotted: str) -> dict[str, Any] | None:
    """The literal top-level values of module `dotted`, looked up beside the script, then at
    the checkout's root; None when it is not a file of the checkout."""
    parts = dotted.split(".")
    real_root = root.resolve()
    for base in (here, root):
        for candidate in (base.joinpath(*parts).with_suffix(".py"),
                          base.joinpath(*parts, "__init__.py")):
            resolved = candidate.resolve()
            if real_root not in resolved.parents or not resolved.is_file():
                continue
            tree = _parse(resolved)
            if tree is None:
                return None
            values = _top_level_literals(tree)
            return {
                k: v for k, v in values.items() if not k.startswith("_") and _is_json(v)
            }
    return None


def _section(call: ast.Call) -> str | None:
    """The `name` a connect call gives (positional or keyword), else `General`; None when it
    is not a literal string."""
    given: ast.expr | None = call.args[1] if len(call.args) > 1 else None
    for keyword in call.keywords:
        if keyword.arg == "name":
            given = keyword.value
    if given is None:
        return SECTION
    if isinstance(given, ast.Constant) and isinstance(given.value, str) and given.value:
        return given.value
    if isinstance(given, ast.Constant) and given.value is None:
        return SECTION
    return None


def _is_json(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False
