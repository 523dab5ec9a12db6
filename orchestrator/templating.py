"""`${...}` placeholders inside any string: `"retrain on ${dataset.name} v${dataset.version}"`.

Unlike ClearML, a placeholder works anywhere in a string, not only as a parameter's whole
value. `$${` writes a literal `${`. Names are dotted paths into a flat context
(`dataset.id`, `params.General/dataset_id`, `task.metrics.val/accuracy`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.errors import UserError

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
# The same, plus a bare `${` that no `}` closes (tried last, so it matches only then).
_OPEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")


class TemplateError(UserError):
    """A placeholder names a variable that does not exist here."""


def placeholders(text: str) -> list[str]:
    """The variable names used in `text`, in order (escaped `$${` ignored)."""
    return [m.group(1).strip() for m in _TOKEN.finditer(text) if m.group(0) != "$${"]


def unterminated(text: str) -> bool:
    """Whether `text` opens a placeholder it never closes (`"${dataset.id/x"`): it would
    render literally, so where values are checked (triggers.yaml) it is an error."""
    return any(m.group(0) == "${" for m in _OPEN.finditer(text))


def check(text: str, known: Callable[[str], bool], *, where: str) -> None:
    """Raise `TemplateError` for the first placeholder `known` rejects."""
    for name in placeholders(text):
        if not name or not known(name):
            raise TemplateError(f"{where}: unknown variable ${{{name}}} in {text!r}")


def render(text: str, context: Mapping[str, Any], *, where: str = "value") -> str:
    """Substitute every `${name}` from `context`; lists and dicts render as JSON."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1).strip()
        if name not in context:
            known = ", ".join(sorted(context)[:12]) or "none"
            raise TemplateError(f"{where}: unknown variable ${{{name}}} (known here: {known})")
        return to_text(context[name])

    return _TOKEN.sub(substitute, text)


def render_value(value: Any, context: Mapping[str, Any], *, where: str) -> Any:
    """Render placeholders in a string, or in every string inside a list or dict. A string
    that is exactly one placeholder takes the variable's own value (a number stays a number)."""
    if isinstance(value, str):
        names = placeholders(value)
        if len(names) == 1 and value.strip() == f"${{{names[0]}}}" and names[0] in context:
            return context[names[0]]
        return render(value, context, where=where)
    if isinstance(value, list):
        return [render_value(v, context, where=where) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, context, where=f"{where}.{k}") for k, v in value.items()}
    return value


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
