"""triggers.yaml, version 1: what users write, validated into typed objects.

    version: 1
    defaults: {queue: gpu}
    triggers:
      - name: retrain-on-production-data
        on: {dataset: {project: dataset_blogpost, name: "*", tags: [Production],
                       event: [finalized, tagged]}}
        run: {template: dataset_blogpost/training,
              overrides: {General/dataset_id: "${dataset.id}"}}
        policy: {on_busy: queue, max_concurrent: 1, cooldown: 0s}

Every error is reported as `file:line:col: field: message` by `orchestrator.yamlfile`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from orchestrator.tasks.spec import (
    MAX_DURATION_S,
    check_param_name,
    check_queue,
    parse_duration,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

AGGREGATES = ("min", "max", "last")
"""What a task trigger's metric condition may apply to a series: `min(loss)`, `max(val/acc)`,
`last(loss)` (see `orchestrator.triggers.match.metric_value`)."""
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\s*$")
_METRIC_TEST = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")


def bounded_duration(value: Any) -> int:
    """A duration (`90s`, `30m`, `12h`, `2d`) in seconds, at most `MAX_DURATION_S` (a year:
    longer is a typo, and values past ~10^9 days overflow the date arithmetic of every poll)."""
    return parse_duration(value, maximum=MAX_DURATION_S)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TagFilter(_Strict):
    """`tags: [A, B]` means all of them; the mapping form says all / any / none explicitly."""

    all: tuple[str, ...] = ()
    any: tuple[str, ...] = ()
    none: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.all:
            parts.append("all of " + ", ".join(self.all))
        if self.any:
            parts.append("any of " + ", ".join(self.any))
        if self.none:
            parts.append("none of " + ", ".join(self.none))
        return "; ".join(parts) or "any tags"


def _tags(value: Any) -> Any:
    if value is None:
        return TagFilter()
    if isinstance(value, str):
        return TagFilter(all=(value,))
    if isinstance(value, (list, tuple)):
        return TagFilter(all=tuple(value))
    return value


def _events(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Tags = Annotated[TagFilter, BeforeValidator(_tags)]
DatasetEvent = Literal["created", "finalized", "tagged", "untagged", "published"]
TaskStatus = Literal["queued", "started", "completed", "failed", "aborted"]
ModelEvent = Literal["registered", "tagged", "published"]


class DatasetSource(_Strict):
    project: str = "**"
    name: str = "*"
    tags: Tags = TagFilter()
    event: Annotated[tuple[DatasetEvent, ...], BeforeValidator(_events)] = ("finalized", "tagged")


class TaskSource(_Strict):
    project: str = "**"
    name: str = "*"
    tags: Tags = TagFilter()
    status: Annotated[tuple[TaskStatus, ...], BeforeValidator(_events)] = ("completed",)
    metrics: dict[str, str] = Field(default_factory=dict)
    """Metric name -> comparison, e.g. {"val/accuracy": ">= 0.9"}."""

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, str]) -> dict[str, str]:
        for name, test in value.items():
            call = _CALL.match(name)
            if call is not None and call.group(1) not in AGGREGATES:
                raise ValueError(
                    f"metrics.{name}: unknown aggregate {call.group(1)!r}; use min(), max() or "
                    "last() of a series, or the metric's plain name"
                )
            if call is not None and not call.group(2).strip():
                raise ValueError(
                    f"metrics.{name}: names no metric; use min(), max() or last() of a series, "
                    "e.g. min(loss)"
                )
            if not _METRIC_TEST.match(str(test)):
                raise ValueError(f"metrics.{name}: {test!r} is not a comparison such as '>= 0.9'")
        return value


class ModelSource(_Strict):
    project: str = "**"
    name: str = "*"
    tags: Tags = TagFilter()
    event: Annotated[tuple[ModelEvent, ...], BeforeValidator(_events)] = (
        "registered",
        "tagged",
        "published",
    )


class ScheduleSource(_Strict):
    cron: str | None = None
    every: str | None = None
    """An interval such as 30m or 6h, instead of cron."""
    timezone: str = "UTC"

    # Each field is checked with the very parser the daemon schedules it with (APScheduler's),
    # so a value `triggers check` passes can never fail at start-up or on a reload.
    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.split()) != 5:
            raise ValueError(f"cron {value!r} must have 5 fields (minute hour day month weekday)")
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"cron {value!r}: {exc}") from None
        return value

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            bounded_duration(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception:
            raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one(self) -> ScheduleSource:
        if bool(self.cron) == bool(self.every):
            raise ValueError("give exactly one of cron or every")
        try:
            self.build()
        except (ValueError, OverflowError, LookupError) as exc:
            raise ValueError(f"the scheduler cannot build this schedule: {exc}") from None
        return self

    def build(self) -> Any:
        """The APScheduler trigger the daemon runs this schedule on."""
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.cron:
            return CronTrigger.from_crontab(self.cron, timezone=self.timezone)
        return IntervalTrigger(seconds=bounded_duration(self.every or "0"), timezone=self.timezone)


class Source(_Strict):
    """Exactly one of dataset, task, model or schedule."""

    dataset: DatasetSource | None = None
    task: TaskSource | None = None
    model: ModelSource | None = None
    schedule: ScheduleSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("dataset", "task", "model", "schedule") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one source: dataset, task, model or schedule")
        return self

    @property
    def kind(self) -> str:
        for name in ("dataset", "task", "model", "schedule"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated to have one source")


class RunSpec(_Strict):
    template: str
    queue: str | None = None
    priority: Literal["high", "normal", "low"] = "normal"
    overrides: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()
    allow_new_params: bool = False

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            check_param_name(name)
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        return check_queue(value) if value else value


class Policy(_Strict):
    on_busy: Literal["queue", "skip", "supersede", "coalesce"] = "queue"
    max_concurrent: Annotated[int, Field(ge=1, le=1000)] = 1
    cooldown: int = 0
    """Seconds; written as a duration (`0s`, `10m`, `1h`)."""

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, value: Any) -> int:
        if value in (0, "0", "0s", None):
            return 0
        return bounded_duration(value)


class Trigger(_Strict):
    name: str
    on: Source
    run: RunSpec
    policy: Policy = Policy()
    enabled: bool = True
    allow_cycles: bool = False
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a trigger name (letters, digits, '_', '.', '-')")
        return value


class Defaults(_Strict):
    queue: str | None = None
    priority: Literal["high", "normal", "low"] | None = None

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        return check_queue(value) if value else value


class TriggersFile(_Strict):
    version: Literal[1]
    defaults: Defaults = Defaults()
    triggers: tuple[Trigger, ...] = ()
