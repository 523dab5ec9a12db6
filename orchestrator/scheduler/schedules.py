"""Cron and interval triggers on APScheduler, swapped all or nothing.

`plan` builds every enabled schedule trigger's APScheduler trigger from a loaded triggers
file before anything is swapped: a cron that APScheduler's own parser refuses (`99 * * * *`)
fails the whole reload with its place in the file, whatever the schema let through, and the
running schedule is untouched. `apply` then swaps jobs, which cannot fail half-way for a bad
value because every value was already parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import RetrainError
from orchestrator.triggers.config import Config
from orchestrator.yamlfile import FileError

Key = tuple[str | None, str | None, str]
"""(cron, every, timezone): what decides when a schedule trigger ticks."""

Plan = dict[str, tuple[Key, Any]]
"""Trigger name -> (its key, its APScheduler trigger)."""


def plan(config: Config) -> Plan:
    """Every enabled schedule trigger's APScheduler trigger; `FileError` naming each one
    APScheduler refuses (all of them, not just the first). APScheduler is imported only for
    a file that has one (a daemon without cron or interval triggers never loads it)."""
    out: Plan = {}
    problems: list[str] = []
    places: Places | None = None
    for trigger in config.triggers:
        spec = trigger.on.schedule
        if spec is None or not trigger.enabled:
            continue
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        from orchestrator.tasks.spec import parse_duration

        try:
            when = (
                CronTrigger.from_crontab(spec.cron, timezone=spec.timezone)
                if spec.cron
                else IntervalTrigger(
                    seconds=parse_duration(spec.every or "0"), timezone=spec.timezone
                )
            )
        except (ValueError, TypeError, LookupError, RetrainError) as exc:
            field = "cron" if spec.cron else "every"
            value = spec.cron or spec.every
            places = places or Places(config.path)
            problems.append(
                f"{places(trigger.name, str(value))}: trigger {trigger.name!r}: "
                f"on.schedule.{field}: {value!r} is refused by the scheduler: {exc}"
            )
            continue
        out[trigger.name] = ((spec.cron, spec.every, spec.timezone), when)
    if problems:
        raise FileError(problems)
    return out


def apply(
    scheduler: Any, scheduled: dict[str, Key], new: Plan, tick: Callable[[str], None]
) -> None:
    """Make `scheduler` (APScheduler's BackgroundScheduler) run `new`: drop jobs gone or
    changed, add the new ones. A job whose key did not change keeps its next run time (an
    unrelated edit must not restart a 6-hour interval). `scheduled` is updated in place."""
    for name in list(scheduled):
        if name not in new or new[name][0] != scheduled[name]:
            if scheduler.get_job(name) is not None:
                scheduler.remove_job(name)
            del scheduled[name]
    for name, (key, when) in new.items():
        if name in scheduled:
            continue
        # coalesce: runs missed while down collapse into one, and the miss is logged.
        scheduler.add_job(
            tick,
            when,
            args=[name],
            id=name,
            coalesce=True,
            misfire_grace_time=None,
            max_instances=1,
            replace_existing=True,
        )
        scheduled[name] = key


class Places:
    """`file:line` of a value in a named trigger (the first line holding it after the line
    naming the trigger), or `file` alone where it cannot be found: a daemon message names
    the place. The file is read once however many places are asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            self.lines = []
        self._names: dict[str, int] | None = None

    def __call__(self, name: str, needle: str) -> str:
        if self._names is None:
            self._names = {}
            for i, line in enumerate(self.lines):
                key, _, value = line.strip().lstrip("- ").partition(":")
                if key.strip() == "name":
                    self._names.setdefault(value.strip().strip("'\""), i)
        start = self._names.get(name)
        if start is None:
            return str(self.path)
        for i in range(start, len(self.lines)):
            if needle in self.lines[i]:
                return f"{self.path}:{i + 1}"
        return f"{self.path}:{start + 1}"
