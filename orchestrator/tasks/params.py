"""Parameters from the command line: `SECTION/NAME=VALUE`, typed like the template's value.

ClearML silently creates a parameter the code never reads when an override is misspelled; here
overriding a parameter the template lacks is an error unless new parameters are allowed, and a
value that does not fit the template's type is refused with the expected type named.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import UserError
from orchestrator.tasks.names import check_input_name, check_param_name

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def split_assignment(text: str, option: str) -> tuple[str, str]:
    """`KEY=VALUE` → (KEY, VALUE), or a `UserError` naming the option."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{option}: expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def parse_literal(raw: str) -> Any:
    """A value typed by the user when there is no template value to follow: JSON numbers,
    booleans, null, lists and objects are taken as such; anything else is a string."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value


def coerce(current: Any, raw: str, name: str) -> Any:
    """`raw` converted to the type of the template's `current` value."""
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise UserError(f"--param {name}: expects true or false, got {raw!r}")
    if isinstance(current, int):
        try:
            return int(raw.strip())
        except ValueError:
            raise UserError(f"--param {name}: expects an integer, got {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(raw.strip())
        except ValueError:
            raise UserError(f"--param {name}: expects a number, got {raw!r}") from None
    if isinstance(current, str):
        return raw
    if isinstance(current, (list, dict)):
        kind = "a JSON list" if isinstance(current, list) else "a JSON object"
        try:
            value = json.loads(raw)
        except ValueError:
            raise UserError(f"--param {name}: expects {kind}, got {raw!r}") from None
        if not isinstance(value, type(current)):
            raise UserError(f"--param {name}: expects {kind}, got {raw!r}")
        return value
    return parse_literal(raw)


def parse_params(assignments: Iterable[str]) -> dict[str, Any]:
    """`--param` options of `task create`: names checked, values typed by `parse_literal`."""
    out: dict[str, Any] = {}
    for text in assignments:
        name, raw = split_assignment(text, "--param")
        try:
            check_param_name(name)
        except ValueError as exc:
            raise UserError(f"--param: {exc}") from None
        out[name] = parse_literal(raw)
    return out


def parse_inputs(assignments: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in assignments:
        name, ref = split_assignment(text, "--input")
        try:
            check_input_name(name)
        except ValueError as exc:
            raise UserError(f"--input: {exc}") from None
        out[name] = ref.strip()
    return out


def apply_overrides(
    current: Mapping[str, Any], overrides: Mapping[str, Any], *, allow_new: bool
) -> dict[str, Any]:
    """The template's parameters with overrides applied. Raw strings are coerced to the
    template's types; values that are already typed (from triggers.yaml, say) must match."""
    merged = dict(current)
    for name, value in overrides.items():
        try:
            check_param_name(name)
        except ValueError as exc:
            raise UserError(f"--param: {exc}") from None
        if name not in current:
            if not allow_new:
                known = ", ".join(sorted(current)) or "none"
                raise UserError(
                    f"--param {name}: the template has no such parameter (it has: {known}); "
                    "pass --allow-new-params to add one"
                )
            merged[name] = parse_literal(value) if isinstance(value, str) else value
        elif isinstance(value, str):
            merged[name] = coerce(current[name], value, name)
        else:
            merged[name] = value
    return merged
