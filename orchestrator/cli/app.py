"""The root `retrain` command and its groups."""

from __future__ import annotations

import typer

from orchestrator.cli import (
    admin,
    context,
    dataset,
    health,
    logs,
    metrics,
    model,
    queue,
    status,
    task,
    triggers,
    up,
    worker,
)

app = typer.Typer(
    name="retrain",
    help="Event-driven retraining: version datasets, declare triggers, run training on GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(dataset.app, name="dataset")
app.add_typer(task.app, name="task")
app.add_typer(model.app, name="model")
app.add_typer(triggers.app, name="triggers")
app.command("scheduler")(triggers.scheduler)
app.command("history")(triggers.history)
app.command("worker")(worker.worker)
app.command("status")(status.status)
app.command("logs")(logs.logs)
app.command("metrics")(metrics.metrics)
app.command("health")(health.health)
app.command("up")(up.up)
app.add_typer(queue.queue_app, name="queue")
app.add_typer(queue.redis_app, name="redis")
app.add_typer(admin.config_app, name="config")
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.storage_app, name="storage")


@app.callback()
def root(ctx: typer.Context) -> None:
    """Each invocation starts from the environment as it is now."""
    context.reset()
    ctx.call_on_close(context.reset)
