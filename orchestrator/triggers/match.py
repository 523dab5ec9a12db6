"""Does an event match a trigger? Pure functions: no database, no Redis.

Every "no" names the first filter that failed, so `retrain triggers explain` can say why a
version did not fire a trigger.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from orchestrator.triggers.schema import AGGREGATES, TagFilter, Trigger

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_METRIC_TEST = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class EventView:
    """An event as matching sees it (a row of the event log)."""

    seq: int
    kind: str
    entity_id: str
    project: str
    name: str
    tags: Sequence[str] = ()
    payload: Mapping[str, Any] = field(default_factory=dict)
    time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def source(self) -> str:
        """dataset | task | model | schedule."""
        return self.kind.split(".", 1)[0]

    @property
    def action(self) -> str:
        """The last part of the kind: finalized, tagged, completed, registered, fired..."""
        return self.kind.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Verdict:
    matched: bool
    reason: str = ""


MATCH = Verdict(True)


@lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` stay within one path segment; `**` crosses `/` (sub-projects)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def glob_match(pattern: str, value: str) -> bool:
    return bool(glob_regex(pattern).match(value))


def tags_match(wanted: TagFilter, tags: Sequence[str]) -> Verdict:
    have = set(tags)
    missing = [t for t in wanted.all if t not in have]
    if missing:
        return Verdict(False, f"tags: lacks {', '.join(missing)}")
    if wanted.any and not have.intersection(wanted.any):
        return Verdict(False, f"tags: has none of {', '.join(wanted.any)}")
    present = sorted(have.intersection(wanted.none))
    if present:
        return Verdict(False, f"tags: has excluded {', '.join(present)}")
    return MATCH


def metric_test(test: str, value: Any) -> bool:
    match = _METRIC_TEST.match(test)
    if match is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return _COMPARE[match.group(1)](float(value), float(match.group(2)))


def match(trigger: Trigger, event: EventView) -> Verdict:
    """Whether `event` fires `trigger` as far as its source filters go (policies such as
    cooldown and duplicates are decided later, with the store's state)."""
    source = trigger.on
    if event.source != source.kind:
        return Verdict(False, f"source: a {event.source} event, the trigger watches {source.kind}")
    if source.schedule is not None:
        if event.payload.get("trigger") != trigger.name:
            return Verdict(False, "schedule: another trigger's tick")
        return MATCH
    spec = source.dataset or source.task or source.model
    assert spec is not None
    if source.dataset is not None and event.action not in source.dataset.event:
        return Verdict(
            False, f"event: {event.action} is not one of {', '.join(source.dataset.event)}"
        )
    if source.model is not None and event.action not in source.model.event:
        return Verdict(
            False, f"event: {event.action} is not one of {', '.join(source.model.event)}"
        )
    if source.task is not None and event.action not in source.task.status:
        return Verdict(
            False, f"status: {event.action} is not one of {', '.join(source.task.status)}"
        )
    if not glob_match(spec.project, event.project):
        return Verdict(False, f"project: {event.project} does not match {spec.project}")
    if not glob_match(spec.name, event.name):
        return Verdict(False, f"name: {event.name} does not match {spec.name}")
    verdict = tags_match(spec.tags, event.tags)
    if not verdict.matched:
        return verdict
    if (
        source.dataset is not None
        and event.action != "created"
        and event.payload.get("status") != "final"
    ):
        return Verdict(False, "status: the version is a draft (runs need final data)")
    if source.task is not None:
        for name, test in source.task.metrics.items():
            value = metric_value(event.payload, name)
            if value is None:
                return Verdict(False, f"metrics: {name} was not reported")
            if not metric_test(test, value):
                return Verdict(False, f"metrics: {name} = {value} is not {test.strip()}")
    return MATCH


_AGGREGATE = re.compile(rf"^\s*({'|'.join(AGGREGATES)})\((.+)\)\s*$")


def metric_value(payload: Any, name: str) -> Any:
    """What a task trigger's metric condition tests: `loss` is the last value (of the series,
    or the number in metrics.json), `max(loss)` and `min(loss)` the series' extremes (for a
    metric reported as one number, that number). None when the run reported no such metric."""
    metrics = payload.get("metrics") or {}
    series = payload.get("series") or {}
    found = _AGGREGATE.match(name)
    if found is None:
        return metrics.get(name)
    aggregate, base = found.group(1), found.group(2).strip()
    summary = series.get(base)
    if isinstance(summary, dict) and aggregate in summary:
        return summary[aggregate]
    return metrics.get(base)
