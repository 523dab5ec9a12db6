"""YAML files users write (task.yaml, triggers.yaml), read with positions for precise errors.

Two departures from PyYAML's defaults, both to read what people mean:
- YAML 1.2 booleans: only true/false. In YAML 1.1 `on`, `off`, `yes` and `no` are booleans,
  which would turn the triggers key `on:` into `True:`.
- Every mapping key and sequence item remembers its line and column, so a validation error
  can say `triggers.yaml:12:7: triggers[0].run.template: ...`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import UserError

PathKey = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class FileError(UserError):
    """A problem at a place in a file: `file:line:col: field: message`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Document:
    """Parsed YAML and where each part of it came from."""

    path: Path
    data: Any
    positions: dict[PathKey, tuple[int, int]]

    def where(self, key: PathKey) -> str:
        """`file:line:col` of `key`, or of its nearest ancestor that has a position."""
        probe = tuple(key)
        while probe and probe not in self.positions:
            probe = probe[:-1]
        line, col = self.positions.get(probe, (1, 1))
        return f"{self.path}:{line}:{col}"

    def error(self, key: PathKey, message: str) -> str:
        return f"{self.where(key)}: {dotted(key) or '(top)'}: {message}"

    def validate(self, model: type[BaseModel], data: Any = None) -> Any:
        """Validate into `model`; every problem becomes one `file:line:col: field: message`."""
        try:
            return model.model_validate(self.data if data is None else data)
        except ValidationError as exc:
            raise FileError(
                [self.error(tuple(e["loc"]), _message(e)) for e in exc.errors()]
            ) from None


def load(path: Path) -> Document:
    """Read and parse `path`; a missing file or a syntax error is a `FileError` with its
    position."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise FileError([f"{path}: cannot read: {exc.strerror}"]) from None
    return loads(text, path)


def loads(text: str, path: Path) -> Document:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise FileError([f"{where}: invalid YAML: {exc.problem}"]) from None
    positions: dict[PathKey, tuple[int, int]] = {}
    loader = _Loader("")
    try:
        data = _construct(node, (), positions, loader) if node is not None else None
    finally:
        loader.dispose()
    return Document(path, data, positions)


def dotted(key: PathKey) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _construct(
    node: yaml.Node,
    key: PathKey,
    positions: dict[PathKey, tuple[int, int]],
    loader: yaml.SafeLoader,
) -> Any:
    positions.setdefault(key, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            name = loader.construct_object(key_node, deep=True)
            child = (*key, str(name))
            # A key's position is where the key is written, not where its value starts.
            positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[name] = _construct(value_node, child, positions, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*key, i), positions, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "field required"
    return message
