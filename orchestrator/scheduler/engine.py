"""The firing engine: events past the cursor -> trigger decisions -> clones, exactly once.

One `poll()` reads a batch of events, decides for every matching trigger, and writes in ONE
transaction: the ledger rows (unique per trigger and event), the cloned and queued tasks, and
the cursor advance. Jobs reach Redis only after that commit. If two schedulers race, the
second one's ledger insert (or cursor check) fails and its whole transaction rolls back, so no
event fires a trigger twice; a crash after the commit leaves queued tasks that reconcile sends.

Events past the cursor are pending, never history: a trigger starts counting at the cursor
its scheduler had when it first saw the trigger, and `replay` decides only events the cursor
has passed. A firing that cannot start (no such template, an override or input the template
refuses) is recorded as an `error` decision and waits: it is decided again, in place and
exactly once, when the triggers file or a template changes, or by `replay`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.errors import RetrainError
from orchestrator.store import Store, rows
from orchestrator.store.events import (
    TASK_COMPLETED,
    TASK_CREATED,
    WROTE_EVENTS,
    last_sequence,
    read_events,
)
from orchestrator.store.models import (
    Event,
    SchedulerState,
    Task,
    TriggerFiring,
    TriggerState,
    utcnow,
)
from orchestrator.tasks.lineage import TriggerCause
from orchestrator.tasks.service import TaskService
from orchestrator.tasks.views import TaskInfo, payload
from orchestrator.triggers.config import Config
from orchestrator.triggers.context import variables
from orchestrator.triggers.match import EventView, match
from orchestrator.triggers.schema import Trigger

STATE = "main"
ACTIVE = ("queued", "running")
ERROR = "error"
"""The decision of a firing that could not start: it waits, and is decided again later."""


def view(event: Event) -> EventView:
    return EventView(
        seq=event.seq,
        kind=event.kind,
        entity_id=event.entity_id,
        project=event.project,
        name=event.name,
        tags=tuple(event.tags or ()),
        payload=event.payload or {},
        time=event.created_at,
    )


class TriggerIndex:
    """Triggers by source, with exact project/name patterns in a dict: with 10,000 triggers an
    event is compared only with the triggers that can match it."""

    def __init__(self, triggers: Iterable[Trigger]) -> None:
        self.exact: dict[tuple[str, str, str], list[Trigger]] = defaultdict(list)
        self.globbed: dict[str, list[Trigger]] = defaultdict(list)
        for trigger in triggers:
            kind = trigger.on.kind
            spec = trigger.on.dataset or trigger.on.task or trigger.on.model
            if spec is not None and not _is_glob(spec.project) and not _is_glob(spec.name):
                self.exact[(kind, spec.project, spec.name)].append(trigger)
            else:
                self.globbed[kind].append(trigger)

    def candidates(self, event: EventView) -> list[Trigger]:
        return [
            *self.exact.get((event.source, event.project, event.name), ()),
            *self.globbed.get(event.source, ()),
        ]


def _may_add_template(event: EventView) -> bool:
    """Whether this event may bring a template into being, so a waiting firing may start
    now: a task registered or cloned by a user, or a run that completed. The runs the
    scheduler itself starts do not count (a burst of firings stays one query a batch)."""
    if event.kind == TASK_CREATED:
        return not event.payload.get("trigger")
    return event.kind == TASK_COMPLETED


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass
class Decision:
    trigger: str
    event: int
    decision: str
    """fired | skipped | coalesced | error (cannot start: it waits) | already decided (the
    ledger had it: nothing written) | not matched | pending"""
    reason: str = ""
    task_id: str | None = None
    event_time: dt.datetime | None = None
    """When the event was recorded: fired minus this is the detection latency."""


@dataclass
class PollResult:
    events: int = 0
    cursor: int = 0
    decisions: list[Decision] = field(default_factory=list)
    jobs: list[tuple[TaskInfo, dict[str, Any]]] = field(default_factory=list)
    replace: list[tuple[TaskInfo, dict[str, Any]]] = field(default_factory=list)
    """Waiting runs whose job must be swapped for the new payload (coalesced)."""
    cancel: list[str] = field(default_factory=list)
    """Tasks aborted by `supersede`, whose waiting jobs must leave Redis."""
    conflict: bool = False
    """Another scheduler moved the cursor first; nothing was written."""
    clash: bool = False
    """A decision of this batch was recorded by someone else meanwhile (the cursor did not
    move); nothing was written, and the next poll reads it as already decided."""
    active: dict[str, int] = field(default_factory=dict)
    """Runs each trigger has queued (held or not) or running, kept current within a poll."""
    fired: dict[tuple[str, str], str | None] = field(default_factory=dict)
    """(trigger, entity) -> the task it already started: a re-tag never fires twice."""
    templates: dict[str, Task] = field(default_factory=dict)


class _Preview(Exception):
    """Raised inside a dry run's transaction to roll everything it decided back."""


class Engine:
    """Decides and records firings; the daemon calls `poll` and `release_held`."""

    def __init__(self, store: Store, tasks: TaskService, storage_url: str = "") -> None:
        self.store = store
        self.tasks = tasks
        self.storage_url = storage_url
        self._index: tuple[str, TriggerIndex] | None = None
        self._starts: dict[str, int] | None = None
        self._specs: dict[str, dict[str, Any]] = {}
        self._retry_due = True
        """Decide waiting (`error`) firings again at the next poll: set at start, when the
        triggers change and when a template may have appeared."""

    def index(self, config: Config) -> TriggerIndex:
        if self._index is None or self._index[0] != config.digest:
            self._index = (config.digest, TriggerIndex(config.triggers))
        return self._index[1]

    # -- state -----------------------------------------------------------------------------

    def cursor(self) -> int:
        with self.store.reader() as session:
            state = session.get(SchedulerState, STATE)
            return state.cursor if state else 0

    def sync_triggers(self, config: Config) -> None:
        """Record each trigger's revision. A trigger seen for the first time starts from the
        cursor: every event its scheduler has not processed yet is pending and can fire it
        (however long it took a scheduler to survive long enough to record the trigger);
        events the cursor has passed are history, fired only by `replay`. Any waiting
        (`error`) firing is decided again at the next poll: the file may have fixed it."""
        with self.store.session() as session:
            state = self._state(session)
            known = {row.name: row for row in session.scalars(select(TriggerState))}
            for trigger in config.triggers:
                rev = config.revisions[trigger.name]
                row = known.get(trigger.name)
                if row is None:
                    session.add(
                        TriggerState(
                            name=trigger.name,
                            revision=rev,
                            start_seq=state.cursor,
                            created_at=utcnow(),
                            updated_at=utcnow(),
                        )
                    )
                elif row.revision != rev:
                    # A new revision keeps going from the cursor: events already behind it
                    # are never read again, so an edit does not refire them.
                    row.revision = rev
                    row.updated_at = utcnow()
            state.config_path = str(config.path)
            state.config_error = None
            state.config_loaded_at = utcnow()
            # Waiting firings of a trigger the file no longer has are decided: nothing could
            # ever fire them, and `status` would list them forever.
            names = {t.name for t in config.triggers}
            waiting = set(
                session.scalars(
                    select(TriggerFiring.trigger_name)
                    .where(TriggerFiring.decision == ERROR)
                    .distinct()
                )
            )
            gone = sorted(waiting - names)
            if gone:
                session.execute(
                    update(TriggerFiring)
                    .where(TriggerFiring.decision == ERROR, TriggerFiring.trigger_name.in_(gone))
                    .values(
                        decision="skipped",
                        reason="the trigger was removed from the triggers file while this "
                        "firing waited",
                    )
                )
        self._starts = None
        self._retry_due = True

    def _state(self, session: Session) -> SchedulerState:
        state = session.get(SchedulerState, STATE)
        if state is None:
            state = SchedulerState(name=STATE, cursor=last_sequence(session))
            session.add(state)
            session.flush()
        return state

    # -- the poll step ---------------------------------------------------------------------

    def poll(
        self, config: Config, *, now: dt.datetime | None = None, batch: int = 1000
    ) -> PollResult:
        """Process up to `batch` events past the cursor, and the waiting (`error`) firings
        when they are due to be decided again. Returns the jobs to push (after the commit, by
        the caller) and every decision made.

        A decision the ledger already holds for an event of the batch (an older replay took
        events past the cursor) is reported as `already decided` and the cursor moves on: a
        clash with the ledger is a recorded duplicate, not a reason to retry. Only a moved
        cursor (another scheduler polled first) is a `conflict`."""
        now = now or utcnow()
        result = self._poll(config, now, batch)
        if result.clash:
            # The clashing decision is committed now, so a second pass reads it as decided.
            result = self._poll(config, now, batch)
        return result

    def _poll(self, config: Config, now: dt.datetime, batch: int) -> PollResult:
        index = self.index(config)
        with self.store.reader() as session:
            state = session.get(SchedulerState, STATE)
            cursor = state.cursor if state else 0
            events = [view(e) for e in read_events(session, cursor, batch)]
            retry = self._retry_due or any(_may_add_template(e) for e in events)
            if not events and not retry:  # the idle poll: two indexed reads, nothing else
                return PollResult(cursor=cursor)
            waiting = self._waiting(session, config, batch) if retry else []
            if not events and not waiting:
                self._retry_due = False
                return PollResult(cursor=cursor)
            starts = self._starts_for(session)
            decided = self._decided(session, cursor, events)
        matches = [
            (event, trigger)
            for event in events
            for trigger in index.candidates(event)
            if trigger.name in starts
            and event.seq > starts[trigger.name]
            and match(trigger, event).matched
        ]
        commits = self._commits({t.run.template for _, t in [*waiting, *matches]})
        result = PollResult(events=len(events), cursor=events[-1].seq if events else cursor)
        try:
            with self.store.session() as session:
                state = self._state_for_update(session)
                if state.cursor != cursor:
                    return PollResult(cursor=state.cursor, conflict=True)
                self._prefetch(session, [*waiting, *matches], result)
                # Waiting firings first: their events are older, and a newer event of the
                # same entity is then a duplicate, as it would have been had they started.
                started = self._decide_again(session, config, waiting, now, commits, result)
                for event, trigger in matches:
                    earlier = decided.get((trigger.name, event.seq))
                    if earlier is not None:
                        result.decisions.append(
                            Decision(
                                trigger.name,
                                event.seq,
                                "already decided",
                                f"the ledger had it before the poll reached it: {earlier}",
                                event_time=event.time,
                            )
                        )
                        continue
                    result.decisions.append(
                        self._decide(session, config, trigger, event, now, commits, result)
                    )
                if events:
                    state.cursor = events[-1].seq
                    state.last_poll_at = now
                # No wake-up for our own events: the daemon polls again at once after a poll
                # that did work, and a standby does not poll.
                session.info.pop(WROTE_EVENTS, None)
        except IntegrityError:
            moved = self.cursor()
            if moved != cursor:
                # Another scheduler recorded these firings first (its ledger rows are
                # unique); nothing of ours was written. The next poll starts from its cursor.
                return PollResult(cursor=moved, conflict=True)
            # The cursor did not move, so someone else (a replay) recorded a decision of this
            # batch meanwhile: nothing of ours was written; `poll` reads it as decided.
            return PollResult(cursor=cursor, clash=True)
        if retry:
            # More may wait beyond this batch: go on while the batch made progress.
            self._retry_due = len(waiting) >= batch and started > 0
        return result

    def _decided(
        self, session: Session, cursor: int, events: Sequence[EventView]
    ) -> dict[tuple[str, int], str]:
        """Decisions the ledger holds already for events of this batch (none, unless an older
        replay took events past the cursor): a range of the ledger's event index."""
        if not events:
            return {}
        rows = session.execute(
            select(
                TriggerFiring.trigger_name, TriggerFiring.event_seq, TriggerFiring.decision
            ).where(TriggerFiring.event_seq > cursor, TriggerFiring.event_seq <= events[-1].seq)
        )
        return {(name, seq): decision for name, seq, decision in rows}

    def _waiting(
        self, session: Session, config: Config, limit: int
    ) -> list[tuple[EventView, Trigger]]:
        """Firings that could not start (oldest event first) of triggers in this file."""
        triggers = {t.name: t for t in config.triggers}
        rows = session.execute(
            select(TriggerFiring.trigger_name, Event)
            .join(Event, Event.seq == TriggerFiring.event_seq)
            .where(TriggerFiring.decision == ERROR)
            .order_by(TriggerFiring.event_seq)
            .limit(limit)
        )
        return [(view(event), triggers[name]) for name, event in rows if name in triggers]

    def _decide_again(
        self,
        session: Session,
        config: Config,
        waiting: Sequence[tuple[EventView, Trigger]],
        now: dt.datetime,
        commits: dict[str, str | Exception],
        result: PollResult,
    ) -> int:
        """Decide each waiting firing again, updating its ledger row in place: the row is
        still unique per (trigger, event), so a firing starts at most once. Returns how many
        stopped waiting."""
        if not waiting:
            return 0
        before = len(result.decisions)
        rows = self._error_rows(session, {t.name for _, t in waiting}, [e for e, _ in waiting])
        for event, trigger in waiting:
            row = rows.get((trigger.name, event.seq))
            if row is None:  # decided meanwhile (by a replay)
                continue
            verdict = match(trigger, event)
            if not verdict.matched:
                row.decision, row.reason = "skipped", f"no longer matches: {verdict.reason}"
                row.trigger_revision, row.created_at = config.revisions[trigger.name], now
                result.decisions.append(Decision(trigger.name, event.seq, row.decision, row.reason))
                continue
            result.decisions.append(
                self._decide(session, config, trigger, event, now, commits, result, row)
            )
        return sum(1 for d in result.decisions[before:] if d.decision != ERROR)

    def _error_rows(
        self, session: Session, names: set[str], events: Sequence[EventView]
    ) -> dict[tuple[str, int], TriggerFiring]:
        """The `error` rows of these triggers and events, locked: their events still wait."""
        if not events:
            return {}
        query = select(TriggerFiring).where(
            TriggerFiring.decision == ERROR,
            TriggerFiring.trigger_name.in_(sorted(names)),
            TriggerFiring.event_seq >= min(e.seq for e in events),
            TriggerFiring.event_seq <= max(e.seq for e in events),
        )
        return {
            (r.trigger_name, r.event_seq): r
            for r in session.scalars(rows.for_update(session, query))
        }

    def _starts_for(self, session: Session) -> dict[str, int]:
        """Each trigger's start sequence. Set once, when a trigger is first seen, and never
        changed: read once per process and again only after this process syncs triggers."""
        if self._starts is None:
            self._starts = {r.name: r.start_seq for r in session.scalars(select(TriggerState))}
        return self._starts

    def _prefetch(
        self, session: Session, matches: Sequence[tuple[EventView, Trigger]], result: PollResult
    ) -> None:
        """What every decision of this batch needs, in three queries instead of three per
        firing: earlier firings per (trigger, entity), active runs per trigger, templates."""
        names = sorted({t.name for _, t in matches})
        entities = sorted({e.entity_id for e, _ in matches})
        if not names:
            return
        for name, entity, task_id in session.execute(
            select(
                TriggerFiring.trigger_name, TriggerFiring.entity_id, TriggerFiring.task_id
            ).where(
                TriggerFiring.trigger_name.in_(names),
                TriggerFiring.entity_id.in_(entities),
                TriggerFiring.decision.in_(("fired", "coalesced")),
            )
        ):
            result.fired.setdefault((name, entity), task_id)
        result.active.update({name: 0 for name in names})
        for trigger_name, count in session.execute(
            select(Task.trigger_name, func.count())
            .where(Task.trigger_name.in_(names), Task.status.in_(ACTIVE))
            .group_by(Task.trigger_name)
        ):
            result.active[str(trigger_name)] = int(count)
        for ref in {t.run.template for _, t in matches}:
            try:
                result.templates[ref] = self.tasks.resolve_template(session, ref)
            except RetrainError:
                continue

    def _state_for_update(self, session: Session) -> SchedulerState:
        query = select(SchedulerState).where(SchedulerState.name == STATE)
        query = rows.for_update(session, query)
        state = session.scalars(query).first()
        return state if state is not None else self._state(session)

    def _commits(self, refs: set[str]) -> dict[str, str | Exception]:
        """The commit each template runs at, found before the transaction (resolving a branch
        may ask the repository; its answer is reused for a few seconds). The spec of a
        template named by id never changes and is kept; a name is looked up each time."""
        out: dict[str, str | Exception] = {}
        for ref in refs:
            try:
                spec = self._specs.get(ref)
                if spec is None:
                    with self.store.reader() as session:
                        template = self.tasks.resolve_template(session, ref)
                    spec = dict(template.spec)
                    if template.id == ref:  # a template named by id never changes
                        self._specs[ref] = spec
                out[ref] = self.tasks.commit_for(spec)
            except RetrainError as exc:
                out[ref] = exc
        return out

    def _decide(
        self,
        session: Session,
        config: Config,
        trigger: Trigger,
        event: EventView,
        now: dt.datetime,
        commits: dict[str, str | Exception],
        result: PollResult,
        waiting: TriggerFiring | None = None,
    ) -> Decision:
        """Decide `trigger` on `event` and record it: a new ledger row, or, for a firing that
        was `waiting` (an `error` row), that row updated in place."""
        name, policy = trigger.name, trigger.policy

        def record(decision: str, reason: str = "", task_id: str | None = None) -> Decision:
            if waiting is not None:
                waiting.trigger_revision = config.revisions[name]
                waiting.decision, waiting.reason, waiting.task_id = decision, reason, task_id
                waiting.created_at = now
            else:
                session.add(
                    TriggerFiring(
                        trigger_name=name,
                        trigger_revision=config.revisions[name],
                        event_seq=event.seq,
                        entity_id=event.entity_id,
                        decision=decision,
                        reason=reason,
                        task_id=task_id,
                        created_at=now,
                    )
                )
            # No flush: the whole batch goes in at commit, where the unique (trigger, event)
            # constraint rolls everything back if another scheduler got there first.
            if decision in ("fired", "coalesced"):
                result.fired.setdefault((name, event.entity_id), task_id)
            return Decision(name, event.seq, decision, reason, task_id, event.time)

        if not trigger.enabled:
            return record("skipped", "disabled")
        earlier = result.fired.get((name, event.entity_id))
        if earlier is not None:
            return record("skipped", f"duplicate of task {earlier}")
        if policy.cooldown:
            last = session.scalar(
                select(func.max(TriggerFiring.created_at)).where(
                    TriggerFiring.trigger_name == name, TriggerFiring.decision == "fired"
                )
            )
            if last is not None and now < last + dt.timedelta(seconds=policy.cooldown):
                until = last + dt.timedelta(seconds=policy.cooldown)
                return record("skipped", f"cooldown until {until.isoformat(timespec='seconds')}")
        commit = commits.get(trigger.run.template)
        if isinstance(commit, Exception) or commit is None:
            # Not consumed: the event waits, visibly, until the file or the template changes.
            return record(ERROR, f"cannot start: {commit}")
        held = False
        if result.active[name] >= policy.max_concurrent:
            if policy.on_busy == "skip":
                return record("skipped", f"busy: {result.active[name]} run(s) queued or running")
            queued = list(
                session.scalars(
                    select(Task)
                    .where(Task.trigger_name == name, Task.status == "queued")
                    .order_by(Task.created_at)
                )
            )
            if policy.on_busy == "coalesce" and queued:
                return self._coalesce(session, trigger, event, queued[-1], record, result)
            if policy.on_busy == "supersede":
                for task in queued:
                    self.tasks.abort_in(session, task, f"superseded by event {event.seq}")
                    result.cancel.append(task.id)
                    result.active[name] -= 1
            held = result.active[name] >= policy.max_concurrent
        context = variables(event, name, self.storage_url)
        try:
            info, job = self.tasks.run_in(
                session,
                trigger.run.template,
                template=result.templates.get(trigger.run.template),
                commit=commit,
                priority=trigger.run.priority,
                params=trigger.run.overrides,
                inputs=trigger.run.inputs,
                queue=trigger.run.queue,
                tags=trigger.run.tags,
                context=context,
                allow_new_params=trigger.run.allow_new_params,
                trigger=TriggerCause(name, event.seq, event.source, event.entity_id),
                held=held,
            )
        except RetrainError as exc:
            return record(ERROR, f"cannot start: {exc}")
        result.active[name] += 1
        if not held:
            result.jobs.append((info, job))
        reason = "queued behind a running task (max_concurrent)" if held else ""
        return record("fired", reason, info.id)

    def _coalesce(
        self,
        session: Session,
        trigger: Trigger,
        event: EventView,
        task: Task,
        record: Any,
        result: PollResult,
    ) -> Decision:
        """Re-point the newest waiting run at this event instead of queueing another: every
        field the trigger renders is rendered again from this event, as a new run's would."""
        try:
            self.tasks.repoint_in(
                session,
                task,
                event_seq=event.seq,
                params=trigger.run.overrides,
                inputs=trigger.run.inputs,
                queue=trigger.run.queue,
                tags=trigger.run.tags,
                context=variables(event, trigger.name, self.storage_url),
                allow_new_params=trigger.run.allow_new_params,
                trigger=TriggerCause(trigger.name, event.seq, event.source, event.entity_id),
            )
        except RetrainError as exc:
            # The waiting run keeps its earlier event; this one waits like any that cannot start.
            decision: Decision = record(ERROR, f"cannot start: {exc}")
            return decision
        if not task.held:
            result.replace.append((TaskInfo.of(task), payload(task)))
        decision = record("coalesced", f"folded into waiting task {task.id}", task.id)
        return decision

    # -- replay ------------------------------------------------------------------------------

    def replay_plan(self, trigger: Trigger, since: dt.datetime) -> list[EventView]:
        """Events since `since` that the cursor has passed, that match `trigger`, and that it
        has not decided yet or whose firing waits (`error`). Events past the cursor are not
        history: they are the poll's to decide, so a replay never takes them."""
        with self.store.reader() as session:
            state = session.get(SchedulerState, STATE)
            cursor = state.cursor if state else 0
            decided = set(
                session.scalars(
                    select(TriggerFiring.event_seq).where(
                        TriggerFiring.trigger_name == trigger.name,
                        TriggerFiring.decision != ERROR,
                    )
                )
            )
            events = [
                view(e)
                for e in session.scalars(
                    select(Event)
                    .where(Event.created_at >= since, Event.seq <= cursor)
                    .order_by(Event.seq)
                )
            ]
        return [e for e in events if e.seq not in decided and match(trigger, e).matched]

    def replay(
        self,
        config: Config,
        trigger: Trigger,
        events: Sequence[EventView],
        now: dt.datetime | None = None,
        *,
        dry_run: bool = False,
    ) -> PollResult:
        """Decide `trigger` on past events on purpose, in one transaction (the cursor does not
        move); the ledger still refuses any (trigger, event) decided before. With `dry_run`
        everything is decided exactly as for real, then rolled back: a preview counts what
        the replay will do, duplicates included."""
        now = now or utcnow()
        result = PollResult(events=len(events))
        if not events:
            return result
        commits = self._commits({trigger.run.template})
        try:
            with self.store.session() as session:
                # The scheduler state's row lock orders this with polls and other replays, so
                # what the ledger says below stays true until this commits.
                self._state_for_update(session)
                waiting = self._error_rows(session, {trigger.name}, events)
                decided = self._decided_of(session, trigger.name, events)
                self._prefetch(session, [(event, trigger) for event in events], result)
                for event in events:
                    if event.seq in decided:
                        result.decisions.append(
                            Decision(trigger.name, event.seq, "already decided", decided[event.seq])
                        )
                        continue
                    row = waiting.get((trigger.name, event.seq))
                    result.decisions.append(
                        self._decide(session, config, trigger, event, now, commits, result, row)
                    )
                if dry_run:
                    raise _Preview
        except _Preview:
            result.jobs, result.replace, result.cancel = [], [], []
        return result

    def _decided_of(
        self, session: Session, name: str, events: Sequence[EventView]
    ) -> dict[int, str]:
        """Events of `events` that `name` has decided (not waiting) since the plan was made."""
        if not events:
            return {}
        query = select(TriggerFiring.event_seq, TriggerFiring.decision).where(
            TriggerFiring.trigger_name == name,
            TriggerFiring.decision != ERROR,
            TriggerFiring.event_seq >= events[0].seq,
            TriggerFiring.event_seq <= events[-1].seq,
        )
        return {seq: decision for seq, decision in session.execute(query)}

    # -- held runs -------------------------------------------------------------------------

    def release_held(self, config: Config) -> list[tuple[TaskInfo, dict[str, Any]]]:
        """Send held runs of triggers that have a free slot now (oldest first)."""
        jobs: list[tuple[TaskInfo, dict[str, Any]]] = []
        with self.store.reader() as session:
            names = list(
                session.scalars(select(Task.trigger_name).where(Task.held.is_(True)).distinct())
            )
        if not names:
            return jobs
        with self.store.session() as session:
            for name in names:
                trigger = config.get(name or "")
                limit = trigger.policy.max_concurrent if trigger else 1
                rows = list(
                    session.scalars(
                        select(Task)
                        .where(Task.trigger_name == name, Task.status.in_(ACTIVE))
                        .order_by(Task.queued_at)
                    )
                )
                running = sum(1 for t in rows if not t.held)
                for task in (t for t in rows if t.held):
                    if running >= limit:
                        break
                    task.held = False
                    running += 1
                    jobs.append((TaskInfo.of(task), payload(task)))
        return jobs

    # -- explain ---------------------------------------------------------------------------

    def explain(self, config: Config, events: Sequence[EventView]) -> list[Decision]:
        """Every trigger's decision for these events: the ledger's answer where it has one,
        else whether (and why not) the trigger matches."""
        seqs = [e.seq for e in events]
        with self.store.reader() as session:
            ledger = (
                {
                    (r.trigger_name, r.event_seq): r
                    for r in session.scalars(
                        select(TriggerFiring).where(TriggerFiring.event_seq.in_(seqs))
                    )
                }
                if seqs
                else {}
            )
            starts = {r.name: r.start_seq for r in session.scalars(select(TriggerState))}
            state = session.get(SchedulerState, STATE)
        cursor = state.cursor if state else 0
        out = []
        for event in events:
            for trigger in config.triggers:
                row = ledger.get((trigger.name, event.seq))
                if row is not None:
                    out.append(
                        Decision(trigger.name, event.seq, row.decision, row.reason, row.task_id)
                    )
                    continue
                verdict = match(trigger, event)
                if not verdict.matched:
                    out.append(Decision(trigger.name, event.seq, "not matched", verdict.reason))
                elif trigger.name in starts and event.seq <= starts[trigger.name]:
                    out.append(
                        Decision(
                            trigger.name,
                            event.seq,
                            "not matched",
                            "processed before the trigger was loaded (use triggers replay)",
                        )
                    )
                elif event.seq > cursor:
                    out.append(
                        Decision(
                            trigger.name,
                            event.seq,
                            "pending",
                            "the scheduler has not reached this event yet",
                        )
                    )
                else:
                    out.append(
                        Decision(
                            trigger.name,
                            event.seq,
                            "not matched",
                            "trigger was not loaded when the event was processed",
                        )
                    )
        return out
