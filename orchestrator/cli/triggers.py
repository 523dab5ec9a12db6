"""`retrain scheduler`, `retrain triggers ...` and `retrain history`."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.triggers.config import Config
    from orchestrator.triggers.match import EventView

app = typer.Typer(
    help="Check, list, test and explain triggers.", no_args_is_help=True, suggest_commands=False
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TriggersOpt = Annotated[
    Path | None,
    typer.Option("--triggers", help="Default: $RETRAIN_TRIGGERS_FILE, else ./triggers.yaml."),
]


def _load(path: Path | None, *, check_templates: bool = False) -> Config:
    """The triggers file; with `check_templates`, also checked against the store's templates
    (that each exists, and accepts the trigger's overrides and inputs)."""
    from orchestrator.errors import RetrainError
    from orchestrator.triggers.config import load_config, triggers_path
    from orchestrator.triggers.templates import store_runs, store_templates

    tasks = runtime().tasks
    if check_templates:
        return load_config(
            triggers_path(path),
            templates=store_templates(tasks),
            runs=store_runs(tasks),
            stream=False,
        )

    def resolve(ref: str) -> tuple[str, str] | None:
        try:
            info = tasks.template(ref)
        except RetrainError:
            return None
        return info.project, info.name

    return load_config(triggers_path(path), resolve_template=resolve, runs=store_runs(tasks))


def scheduler(
    triggers: TriggersOpt = None,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            help="Seconds between timed polls (the wake-up makes it rarer).",
            min=0.05,
        ),
    ] = 5.0,
    reconcile_every: Annotated[
        float, typer.Option("--reconcile-every", help="Seconds between reconcile passes.", min=0.1)
    ] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="One iteration, then exit.")] = False,
    wakeup: Annotated[
        bool,
        typer.Option(
            "--wakeup/--no-wakeup",
            help="Poll at once when the store announces events on Redis "
            "(--no-wakeup: timed polls only, e.g. to compare).",
        ),
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus metrics on this port (/metrics).",
            min=1,
            max=65535,
        ),
    ] = None,
) -> None:
    """Run the scheduler daemon: fire triggers on new events, exactly once."""
    import signal

    from orchestrator import lifeline
    from orchestrator.logs import configure
    from orchestrator.scheduler.daemon import Scheduler
    from orchestrator.triggers.config import triggers_path

    if not once:
        # Started by `retrain up`: stop if it dies, also while starting (see
        # orchestrator.lifeline); until the daemon's handlers are set, SIGTERM just ends us.
        lifeline.hold(lifeline.SCHEDULER)
    configure()
    path = triggers_path(triggers)
    if not path.exists():
        raise UserError(f"--triggers: {path} does not exist")
    metrics = None
    if metrics_port is not None:
        from orchestrator.scheduler.metrics import Metrics

        metrics = Metrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise UserError(f"--metrics-port: cannot listen on {metrics_port}: {exc}") from None
    daemon = Scheduler(
        runtime(),
        path,
        poll_interval=poll_interval,
        reconcile_every=reconcile_every,
        wakeup=wakeup,
        metrics=metrics,
    )
    if once:
        try:
            daemon.reload(force=True)
            report = daemon.tick()
        finally:
            # Given back, as a stopping daemon does: a daemon started next leads at once
            # instead of waiting out the lease as a standby.
            with contextlib.suppress(Exception):
                daemon.lease.release()
        output.note(
            f"{'leader' if report.leader else 'standby'}: {report.events} event(s), "
            f"{report.fired} task(s) started"
        )
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
    daemon.run()


@app.command()
def check(
    file: Annotated[
        Path | None, typer.Argument(help="The file, as --triggers FILE also takes it.")
    ] = None,
    triggers: TriggersOpt = None,
) -> None:
    """Validate triggers.yaml: schema, variables, template references, cycles."""
    from orchestrator.triggers.config import triggers_path
    from orchestrator.yamlfile import FileError

    if file is not None and triggers is not None and file != triggers:
        raise UserError("triggers check: give the file once, as FILE or as --triggers FILE")
    file = file or triggers

    try:
        config = _load(file, check_templates=True)
    except FileError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2) from None
    output.note(f"{triggers_path(file)}: {len(config.triggers)} trigger(s) OK")


@app.command("list")
def list_triggers(triggers: TriggersOpt = None, as_json: JsonFlag = False) -> None:
    """Triggers with their source, filters, state, last firing and count, and where each
    starts: the event it counts from (`since event`; the later ones can fire it) and when
    the scheduler first saw it. A trigger no scheduler has loaded yet shows `-`."""
    from sqlalchemy import func, select

    from orchestrator.store.lean import json_time
    from orchestrator.store.models import TriggerFiring, TriggerState

    config = _load(triggers)
    with runtime().store.reader() as session:
        stats = {
            name: (count, last)
            for name, count, last in session.execute(
                select(TriggerFiring.trigger_name, func.count(), func.max(TriggerFiring.created_at))
                .where(TriggerFiring.decision == "fired")
                .group_by(TriggerFiring.trigger_name)
            )
        }
        starts = {r.name: r for r in session.scalars(select(TriggerState))}
    rows = []
    for t in config.triggers:
        count, last = stats.get(t.name, (0, None))
        start = starts.get(t.name)
        rows.append(
            {
                "name": t.name,
                "source": t.on.kind,
                "filter": _summary(t),
                "template": t.run.template,
                "enabled": t.enabled,
                "fired": count,
                "last_fired": json_time(last),
                "start_seq": start.start_seq if start else None,
                "started_at": json_time(start.created_at) if start else None,
            }
        )
    if as_json:
        output.print_json(rows)
        return
    output.table(
        None,
        ["name", "source", "filter", "template", "enabled", "fired", "last fired", "since event"],
        [
            (
                r["name"],
                r["source"],
                r["filter"],
                r["template"],
                r["enabled"],
                r["fired"],
                r["last_fired"],
                "-" if r["start_seq"] is None else f"{r['start_seq']} ({r['started_at']})",
            )
            for r in rows
        ],
    )


def _summary(trigger: Any) -> str:
    source = trigger.on
    if source.schedule is not None:
        return source.schedule.cron or f"every {source.schedule.every}"
    spec = source.dataset or source.task or source.model
    parts = [f"{spec.project}/{spec.name}", spec.tags.describe()]
    if source.dataset is not None:
        parts.append("on " + ", ".join(source.dataset.event))
    if source.task is not None:
        parts.append("status " + ", ".join(source.task.status))
        parts += [f"{k} {v}" for k, v in source.task.metrics.items()]
    if source.model is not None:
        parts.append("on " + ", ".join(source.model.event))
    return "; ".join(parts)


def _entity_events(
    dataset_version: str | None, task: str | None, model: str | None
) -> list[EventView]:
    from sqlalchemy import select

    from orchestrator.scheduler.engine import view
    from orchestrator.store.models import Event

    given = [v for v in (dataset_version, task, model) if v]
    if len(given) != 1:
        raise UserError("name exactly one of --dataset-version, --task, --model")
    with runtime().store.reader() as session:
        rows = list(
            session.scalars(select(Event).where(Event.entity_id == given[0]).order_by(Event.seq))
        )
    if not rows:
        raise UserError(f"no event concerns {given[0]} (is the id right?)")
    return [view(r) for r in rows]


@app.command()
def test(
    name: Annotated[str, typer.Argument(help="Trigger name.")],
    dataset_version: Annotated[str | None, typer.Option("--dataset-version")] = None,
    task: Annotated[str | None, typer.Option("--task")] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    triggers: TriggersOpt = None,
) -> None:
    """Dry run against an entity's newest event: match, or the filter that failed, and the
    rendered overrides. Writes nothing."""
    from orchestrator import templating
    from orchestrator.triggers.context import variables
    from orchestrator.triggers.match import match

    config = _load(triggers)
    trigger = config.get(name)
    if trigger is None:
        raise UserError(f"no trigger {name!r} in {config.path}")
    event = _entity_events(dataset_version, task, model)[-1]
    verdict = match(trigger, event)
    print(
        f"event {event.seq} {event.kind} {event.project}/{event.name} tags "
        f"{', '.join(event.tags) or '-'}"
    )
    if not verdict.matched:
        print(f"no match: {verdict.reason}")
        raise typer.Exit(1)
    print("match")
    context = variables(event, trigger.name, runtime().settings.storage_url)
    for key, value in trigger.run.overrides.items():
        print(f"  {key} = {templating.render_value(value, context, where=key)!r}")


@app.command()
def explain(
    dataset_version: Annotated[str | None, typer.Option("--dataset-version")] = None,
    task: Annotated[str | None, typer.Option("--task")] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    triggers: TriggersOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Every trigger's decision for each event of a dataset version, task or model."""
    from orchestrator.scheduler.engine import Engine

    config = _load(triggers)
    events = _entity_events(dataset_version, task, model)
    rt = runtime()
    decisions = Engine(rt.store, rt.tasks).explain(config, events)
    kinds = {e.seq: e.kind for e in events}
    rows = [
        {
            "event": d.event,
            "kind": kinds[d.event],
            "trigger": d.trigger,
            "decision": d.decision,
            "reason": d.reason,
            "task": d.task_id,
        }
        for d in decisions
    ]
    if as_json:
        output.print_json(rows)
        return
    output.table(
        None,
        ["event", "kind", "trigger", "decision", "task / reason"],
        [
            (r["event"], r["kind"], r["trigger"], r["decision"], r["task"] or r["reason"])
            for r in rows
        ],
    )


@app.command()
def replay(
    name: Annotated[str, typer.Argument(help="Trigger name.")],
    since: Annotated[str, typer.Option("--since", help="ISO time, e.g. 2026-11-01T00:00.")],
    yes: Annotated[bool, typer.Option("--yes", help="Fire; without it, only show.")] = False,
    triggers: TriggersOpt = None,
) -> None:
    """Fire a trigger on past events on purpose: those the scheduler's cursor has passed
    that it has not decided, or whose firing could not start and waits. Without --yes,
    shows what each event would do (fire, duplicate, skip) and writes nothing."""
    from orchestrator.scheduler.engine import Engine

    try:
        start = dt.datetime.fromisoformat(since)
    except ValueError:
        raise UserError(f"--since: {since!r} is not an ISO date or time") from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    config = _load(triggers)
    trigger = config.get(name)
    if trigger is None:
        raise UserError(f"no trigger {name!r} in {config.path}")
    rt = runtime()
    engine = Engine(rt.store, rt.tasks, rt.settings.storage_url)
    plan = engine.replay_plan(trigger, start)
    # Without --yes the replay is decided for real and rolled back: the preview counts
    # exactly what --yes does, duplicates included.
    result = engine.replay(config, trigger, plan, dry_run=not yes)
    if yes:
        from orchestrator.errors import ServiceUnavailable

        for task_id in result.cancel:
            with contextlib.suppress(ServiceUnavailable):
                rt.queues.cancel(task_id)
        for info, job in result.replace:
            with contextlib.suppress(ServiceUnavailable):
                rt.queues.cancel(info.id)
            rt.tasks.push(info, job)
        for info, job in result.jobs:
            rt.tasks.push(info, job)
    events = {e.seq: e for e in plan}
    run_event = {d.task_id: d.event for d in result.decisions if d.decision == "fired"}
    fired = duplicates = 0
    for d in result.decisions:
        e = events[d.event]
        if d.decision == "fired":
            fired += 1
            outcome = f"fired {d.task_id}" if yes else "would fire"
        elif d.reason.startswith("duplicate of task "):
            duplicates += 1
            earlier = run_event.get(d.reason.removeprefix("duplicate of task "))
            outcome = f"duplicate of event {earlier}" if earlier is not None else d.reason
        else:
            outcome = f"{d.decision}: {d.reason}" if d.reason else d.decision
        print(f"{e.seq}\t{e.kind}\t{e.project}/{e.name}\t{e.entity_id}\t{outcome}")
    others = len(result.decisions) - fired - duplicates
    detail = f"{duplicates} duplicate(s)" + (f", {others} not fired" if others else "")
    if not yes:
        output.note(f"{fired} event(s) would fire {name} ({detail}); run again with --yes to fire")
        return
    output.note(
        f"replayed {len(result.decisions)} event(s): {fired} fired, "
        f"{len(result.decisions) - fired} skipped ({detail})"
    )


def history(
    trigger: Annotated[str | None, typer.Option("--trigger")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=output.MAX_LIMIT)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Firings and skips, newest first."""
    from orchestrator.cli.lean import lean_read
    from orchestrator.scheduler.history import history as decisions

    rows = lean_read(lambda conn: decisions(conn, trigger=trigger, limit=limit))
    if as_json:
        output.print_json(rows)
        return
    output.table(
        None,
        ["time", "trigger", "event", "entity", "decision", "task / reason"],
        [
            (
                r["time"],
                r["trigger"],
                f"{r['event']} {r['kind']}",
                f"{r['entity']} {r['version'] or ''}".strip(),
                r["decision"],
                r["task"] or r["reason"],
            )
            for r in rows
        ],
    )
