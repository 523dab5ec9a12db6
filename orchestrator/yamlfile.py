"""YAML files users write (task.yaml, triggers.yaml), read with positions for precise errors.

Two departures from PyYAML's defaults, both to read what people mean:
- YAML 1.2 booleans: only true/false. In YAML 1.1 `on`, `off`, `yes` and `no` are booleans,
  which would turn the triggers key `on:` into `True:`.
- Every mapping key and sequence item remembers its line and column, so a validation error
  can say `triggers.yaml:12:7: triggers[0].run.template: ...`.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import UserError

PathKey = tuple[str | int, ...]
MAX_SHOWN = 50
"""Problems printed at most (all are kept in `FileError.problems`)."""


# libyaml's parser when PyYAML was built with it (a 10,000-trigger file loads in a fraction of
# the time); the resolver and constructor are the same either way.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader with YAML 1.2 booleans."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """Integers as YAML reads them, but one too long for Python to convert (over 4,300
    digits) is an error at its place, not a traceback."""
    try:
        return int(yaml.SafeLoader.construct_yaml_int(loader, node))
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(str(node.value))} characters is too large",
            node.start_mark,
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class FileError(UserError):
    """A problem at a place in a file: `file:line:col: field: message`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_SHOWN]
        if len(self.problems) > MAX_SHOWN:
            shown.append(f"... and {len(self.problems) - MAX_SHOWN} more problems")
        super().__init__("\n".join(shown))


@dataclass
class Document:
    """Parsed YAML, and (worked out only when an error needs it) where each part came from:
    a 10,000-trigger file then loads in a fraction of the time and memory."""

    path: Path
    data: Any
    text: str

    @cached_property
    def positions(self) -> dict[PathKey, tuple[int, int]]:
        node = yaml.compose(self.text, Loader=_Loader)
        positions: dict[PathKey, tuple[int, int]] = {}
        loader = _Loader("")
        try:
            if node is not None:
                _construct(node, (), positions, loader)
        finally:
            loader.dispose()
        return positions

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
                [self.error(tuple(e["loc"]), message(e)) for e in exc.errors()]
            ) from None


def load(path: Path) -> Document:
    """Read and parse `path`; a missing file, text that is not UTF-8 or a syntax error is a
    `FileError` with its position."""
    return loads(read(path), path)


def read(path: Path) -> str:
    """The text of `path`: a missing or unreadable file, or bytes that are not UTF-8 (a binary
    file, say), is a one-line `FileError` naming where."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise FileError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileError(
            [f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x})"]
        ) from None


def loads(text: str, path: Path) -> Document:
    """Parse `text` (read from `path`) whole. Aliases may not expand it past
    `MAX_EXPANDED_NODES`: the check is linear in the text, so a "billion laughs" file is
    refused at once instead of being expanded by validation or error reporting."""
    loader = _Loader(text)
    # The cyclic garbage collector would walk the growing tree again and again while a big
    # file is parsed (three quarters of the time for 10,000 triggers); nothing here makes
    # garbage cycles worth collecting, so it waits until the tree is built.
    collecting = gc.isenabled()
    gc.disable()
    try:
        node = loader.get_single_node()
        if node is not None and ("*" in text or "<<" in text):  # no alias: nothing expands
            _check_expansion(node, path)
        data = _construct_fast(node, loader) if node is not None else None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, path, text) from None
    finally:
        loader.dispose()
        if collecting:
            gc.enable()
    return Document(path, data, text)


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


def _construct_fast(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    """What `loader.construct_document(node)` returns, several times faster: plain maps,
    sequences and strings are built directly (most of a triggers file); every other node
    (numbers, booleans, nulls, timestamps, merge keys) goes through the loader's own
    constructors, so the values are exactly YAML's. Aliases are bounded before this runs."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR:
            return node.value
        return loader.construct_object(node, deep=True)
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        return [_construct_fast(item, loader) for item in node.value]
    if (
        isinstance(node, yaml.MappingNode)
        and node.tag == _MAP
        and not any(key.tag == _MERGE for key, _ in node.value)
    ):
        out = {}
        for key, value in node.value:
            name = _construct_fast(key, loader)
            try:
                out[name] = _construct_fast(value, loader)
            except TypeError:  # an unhashable key: the loader's own error, with its place
                return loader.construct_object(node, deep=True)
        return out
    return loader.construct_object(node, deep=True)


def _syntax_error(exc: yaml.YAMLError, path: Path, text: str) -> FileError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        return FileError([f"{where}: invalid YAML: {exc.problem}"])
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        what = (
            "the file contains a NUL character"
            if exc.character in (0, "\0")
            else f"invalid YAML: unacceptable character U+{_code(exc.character):04X}"
        )
        return FileError([f"{path}:{line}:{column}: {what} (is it a text file?)"])
    return FileError([f"{path}: invalid YAML: {exc}"])


def _code(character: int | str) -> int:
    return character if isinstance(character, int) else ord(character)


MAX_EXPANDED_NODES = 2_000_000
"""Nodes a document may have once its aliases are expanded: well above a 10,000-trigger file
(~200,000 nodes), far below what a few lines of nested aliases can make (10^9)."""


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse documents whose aliases expand past `MAX_EXPANDED_NODES`, or refer to a node
    that contains them (a recursive structure no validator or serializer can walk). Each
    node's expanded size is computed once (aliased nodes are shared), so this is linear."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not children_done:
            open_nodes.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise _bomb(path, child, "an alias refers to a node that contains it")
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > MAX_EXPANDED_NODES:
            raise _bomb(path, node, f"aliases expand to more than {MAX_EXPANDED_NODES:,} nodes")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _bomb(path: Path, node: yaml.Node, problem: str) -> FileError:
    mark = node.start_mark
    return FileError([f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"])


def load_items(path: Path, key: str) -> tuple[Document, Iterator[Any]]:
    """Like `load`, for a file whose top-level `key` holds a long list (10,000 triggers):
    the list's items are parsed one at a time and handed out by the iterator, so the raw
    tree of the whole file never sits in memory at once (it would cost ~100 MB, and the
    allocator keeps that resident after it is freed). The document's data holds the other
    top-level keys. Files using anchors or aliases are parsed whole instead."""
    text = read(path)
    try:
        spans = _top_spans(text)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, path, text) from None
    if spans is None or not isinstance(spans.get(key), list):
        document = loads(text, path)
        items = document.data.pop(key, None) if isinstance(document.data, dict) else None
        return document, iter(items or [])
    data = {name: _load_span(text, span, path) for name, span in spans.items() if name != key}
    item_spans = spans[key]
    return Document(path, data, text), (_load_span(text, span, path) for span in item_spans)


Span = tuple[int, int, int]
"""(start offset, end offset, start column) of a node in the text."""


class _Aliased(Exception):
    """The file uses anchors or aliases: its nodes cannot be parsed one by one."""


def _top_spans(text: str) -> dict[str, Any] | None:
    """Spans of the top-level mapping's values; for a sequence value, the spans of its
    items. None when the file is not a plain mapping or uses aliases."""
    events = iter(yaml.parse(text, Loader=_Loader))
    try:
        next(events)  # stream start
        if not isinstance(next(events), yaml.DocumentStartEvent):
            return None
        if not isinstance(next(events), yaml.MappingStartEvent):
            return None
        spans: dict[str, Any] = {}
        while not isinstance(event := next(events), yaml.MappingEndEvent):
            if not isinstance(event, yaml.ScalarEvent):
                return None
            first = next(events)
            if isinstance(first, yaml.SequenceStartEvent):
                items = []
                while not isinstance(item := next(events), yaml.SequenceEndEvent):
                    items.append(_span(item, _last_of(item, events)))
                spans[event.value] = items
            else:
                spans[event.value] = _span(first, _last_of(first, events))
        return spans
    except _Aliased:
        return None


def _last_of(first: yaml.Event, events: Iterator[yaml.Event]) -> yaml.Event:
    """Consume the node that starts with `first`; return its last event."""
    depth = 0
    event = first
    while True:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Aliased
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if depth == 0:
            return event
        event = next(events)


def _span(start: yaml.Event, end: yaml.Event) -> Span:
    assert start.start_mark is not None and end.end_mark is not None  # the parser sets them
    return start.start_mark.index, end.end_mark.index, start.start_mark.column


def _load_span(text: str, span: Span, path: Path | None = None) -> Any:
    start, end, column = span
    # Indent the first line like the rest so that a block node parses on its own.
    try:
        return yaml.load(" " * column + text[start:end], Loader=_Loader)  # noqa: S506
    except yaml.MarkedYAMLError as exc:  # what only constructing finds (a number too large)
        mark = exc.problem_mark
        line = text.count("\n", 0, start) + (mark.line if mark else 0) + 1
        col = (mark.column + 1) if mark else 1
        raise FileError([f"{path}:{line}:{col}: invalid YAML: {exc.problem}"]) from None


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


def message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "field required"
    return message
